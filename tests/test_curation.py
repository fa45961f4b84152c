"""Curation on run directories with crafted rows: planted duplicates, near duplicates and benchmark
leaks are all found and nothing else goes; each filter; the record kept; re-runs; the CLI.

The helpers at the top (``pair``, ``make_run``, ``english``) are also used by test_export and
test_report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glan.curation import CurateConfig, CurationError, CurationLog, curate, runner
from glan.curation import dedup as dedup_module
from glan.curation.decontaminate import load_benchmarks
from glan.curation.dedup import HashIndex, NearDuplicates
from glan.curation.filters import AnswerLeak, Refusal, TooShort, WrongLanguage
from glan.curation.minhash import jaccard
from glan.curation.text import normalise
from glan.items import NewItem
from glan.run import curation as results
from glan.run.jsonl import OUTPUT_NAME, JsonlOutput
from glan.run.store import Store

# -- helpers: run directories with crafted rows -------------------------------------------------

_WORD_TEXT = (
    "time year people way day thing life child world school state family student group country"
    " problem hand part place case week company system program question work government number"
    " night point home water room area money story fact month study book job word business issue"
    " side kind head house service friend power hour game line end member law car city community"
    " name team minute idea body information parent face level office door health person art war"
    " history party result change morning reason research moment air teacher force education"
    " energy heat light sound motion pressure market price cell plant animal river mountain theory"
    " method model proof equation function value rate growth trade culture language music poem"
    " novel court judge vote policy tax bank loan risk profit cost explain describe compare measure"
    " predict prove show find solve discuss estimate derive calculate evaluate important simple"
    " complex modern ancient rapid slow strong weak large small high low basic general specific"
    " social natural economic political chemical physical"
)
WORDS = _WORD_TEXT.split()


def english(rng: random.Random, low: int, high: int) -> str:
    """Random English words: distinct from any other such text, and English to a detector."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def pair(
    row_id: str,
    question: str,
    answer: str,
    *,
    discipline: str = "Mathematics",
    field: str = "Formal Science",
    sub_field: str | None = None,
    subject: str = "Algebra",
    level: str = "Undergraduate",
    question_type: str = "basic",
    key_concepts: Sequence[str] = ("groups",),
    language: str | None = None,
    truncated: bool = False,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "meta": {
            "field": field,
            "sub_field": sub_field,
            "discipline": discipline,
            "subject": subject,
            "level": level,
            "sessions": ["Session one"],
            "key_concepts": list(key_concepts),
            "question_type": question_type,
            "question_model": "teacher-big",
            "answer_model": "teacher-small",
            "prompt_version": "p-test",
            "seed": 0,
            "language": language,
            "syllabus_language": None,
            "question_id": f"q-{row_id}",
            "truncated": truncated,
        },
    }


def good_pair(row_id: str, rng: random.Random, **meta: Any) -> dict[str, Any]:
    question = english(rng, 18, 30).capitalize() + "?"
    answer = ". ".join(english(rng, 10, 16).capitalize() for _ in range(4)) + "."
    return pair(row_id, question, answer, **meta)


def make_run(
    directory: Path,
    rows: Iterable[dict[str, Any]],
    syllabi: Iterable[dict[str, Any]] = (),
) -> Path:
    """A run directory whose store holds ``rows`` as finished answers, in this output order,
    and ``syllabi`` (dicts with the subject's data and ``sessions``) as finished subjects."""
    store = Store.open(directory)
    for seq, row in enumerate(rows):
        meta = row["meta"]
        store.add_nodes(
            [NewItem(row["id"], "answer", f"q-{row['id']}", meta["discipline"], seq, {})]
        )
        store.finish(store.get(row["id"]), row, output=True)
    for seq, syllabus in enumerate(syllabi):
        data = {k: v for k, v in syllabus.items() if k != "sessions"}
        node_id = f"subject-{seq}"
        store.add_nodes([NewItem(node_id, "subject", None, data["discipline"], seq, data)])
        store.finish(store.get(node_id), {"introduction": "", "sessions": syllabus["sessions"]})
    store.commit()
    output = JsonlOutput(directory / OUTPUT_NAME)
    output.open(store)
    output.close()
    store.close()
    return directory


def removed(run_dir: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """{row id: (reason, matched)} of the curation in force."""
    store = Store.open(run_dir)
    try:
        log = CurationLog(store)
        latest = log.latest()
        assert latest is not None
        return {r.row_id: (r.reason, r.matched) for r in log.removals(latest.id)}
    finally:
        store.close()


def raw_digest(run_dir: Path) -> str:
    """A fingerprint of everything generated: nodes, calls and instructions.jsonl."""
    store = Store.open(run_dir)
    digest = hashlib.sha256()
    for table in ("nodes", "calls"):
        for row in store.db.execute(f"SELECT * FROM {table} ORDER BY rowid"):
            digest.update(repr(row).encode())
    store.close()
    digest.update((run_dir / OUTPUT_NAME).read_bytes())
    return digest.hexdigest()


NO_FILTERS = {
    "drop_truncated": False,
    "drop_refusals": False,
    "drop_leaks": False,
    "language": "any",
    "min_question_chars": 0,
    "min_answer_chars": 0,
}


# -- dedup and decontamination: planted rows are found, nothing else goes -----------------------

BENCHMARK = [
    {"question": english(random.Random(100 + i), 20, 30), "answer": "42"} for i in range(20)
]


def planted_run(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, str | None]]]:
    """200 distinct pairs plus planted copies; returns the run and {planted id: (reason, of)}."""
    rng = random.Random(7)
    rows = [good_pair(f"r{i:04d}", rng) for i in range(200)]
    planted: dict[str, tuple[str, str | None]] = {}
    for n, i in enumerate((3, 40, 77, 120, 199)):
        # the same question in another case, spacing and punctuation
        copy = dict(rows[i], id=f"s{n}-exact")
        question = rows[i]["messages"][0]["content"]
        copy["messages"] = [
            {"role": "user", "content": "  " + question.upper().replace(" ", "  ") + "!!"},
            rows[i]["messages"][1],
        ]
        rows.append(copy)
        planted[copy["id"]] = ("exact_duplicate", rows[i]["id"])
    for n, i in enumerate((5, 50, 90, 150, 180)):
        # one word of ~20 changed (Jaccard 0.82-0.88): a near duplicate, not an exact one
        words = rows[i]["messages"][0]["content"].split()
        words[len(words) // 2] = "astronomy"
        copy = pair(f"t{n}-near", " ".join(words), english(rng, 30, 40))
        rows.append(copy)
        planted[copy["id"]] = ("near_duplicate", rows[i]["id"])
    for n, item in enumerate((2, 11, 19)):
        # a benchmark question inside a generated one
        passage = " ".join(BENCHMARK[item]["question"].split()[2:17])
        question = f"Consider this. {passage}. What follows for the {english(rng, 3, 5)}?"
        copy = pair(f"u{n}-leak", question, english(rng, 30, 40))
        rows.append(copy)
        planted[copy["id"]] = ("decontaminated", None)
    return make_run(tmp_path / "run", rows), planted


def write_benchmark(path: Path) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in BENCHMARK), encoding="utf-8")
    return path


def test_planted_duplicates_near_duplicates_and_leaks_are_found_and_nothing_else(tmp_path):
    run, planted = planted_run(tmp_path)
    benchmark = write_benchmark(tmp_path / "bench.jsonl")

    result = curate(run, CurateConfig(benchmarks=[str(benchmark)]))

    found = removed(run)
    assert set(found) == set(planted)
    for row_id, (reason, original) in planted.items():
        assert found[row_id][0] == reason
        if original is not None:
            assert found[row_id][1]["duplicate_of"] == original
    assert result.counts == {"decontaminated": 3, "exact_duplicate": 5, "near_duplicate": 5}
    assert result.rows_in == 213 and result.rows_kept == 200
    # which benchmark item each leak matched, and the words it shares
    leaks = {
        row_id: matched for row_id, (reason, matched) in found.items() if reason == "decontaminated"
    }
    assert sorted(m["item"] for m in leaks.values()) == [2, 11, 19]
    for matched in leaks.values():
        assert matched["benchmark"] == "bench.jsonl"
        assert len(matched["ngram"].split()) == 13
        assert matched["ngram"] in normalise(BENCHMARK[matched["item"]]["question"])
    near = [m for reason, m in found.values() if reason == "near_duplicate"]
    assert all(0.8 <= m["jaccard"] < 1 for m in near)


def test_the_smallest_id_stays_whatever_order_the_rows_arrived_in(tmp_path):
    rng = random.Random(3)
    question = english(rng, 20, 25)
    late_but_first = pair("a-first-by-id", question, english(rng, 30, 40))
    early = pair("z-last-by-id", question, english(rng, 30, 40))
    run = make_run(tmp_path, [early, good_pair("m", rng), late_but_first])
    curate(run, CurateConfig(**NO_FILTERS))
    assert removed(run) == {"z-last-by-id": ("exact_duplicate", {"duplicate_of": "a-first-by-id"})}


def test_near_duplicate_threshold_and_shingle_size_are_honoured(tmp_path):
    rng = random.Random(11)
    base = english(rng, 14, 16)
    words = base.split()
    words[2], words[7], words[11] = "zebra", "quartz", "violin"  # three of ~15 words changed
    similar = " ".join(words)
    texts = {1: normalise(base)}
    strict = NearDuplicates(threshold=0.8, shingle=5, num_perm=128, text_of=texts.__getitem__)
    loose = NearDuplicates(threshold=0.3, shingle=5, num_perm=128, text_of=texts.__getitem__)
    for finder in (strict, loose):
        finder.add(finder.probe(texts[1]), 1)
    similarity = jaccard(strict.shingles(texts[1]), strict.shingles(normalise(similar)))
    assert 0.3 < similarity < 0.8
    assert strict.match(strict.probe(normalise(similar))) is None
    match = loose.match(loose.probe(normalise(similar)))
    assert match is not None and match.key == 1 and match.jaccard == pytest.approx(similarity)
    # the shingle size is used: 3-character shingles of the same texts give another Jaccard
    small = NearDuplicates(threshold=0.8, shingle=3, num_perm=128, text_of=texts.__getitem__)
    other = jaccard(small.shingles(texts[1]), small.shingles(normalise(similar)))
    assert other != pytest.approx(similarity)


def test_hash_index_keeps_every_value_in_order_across_merges(monkeypatch):
    monkeypatch.setattr(dedup_module, "_BUFFER", 4)
    index = HashIndex()
    rng = random.Random(5)
    expected: dict[int, list[int]] = {}
    for value in range(500):
        key = rng.choice([rng.getrandbits(64), 17, 2**64 - 1])
        index.add(key, value)
        expected.setdefault(key, []).append(value)
    assert len(index) == 500
    sizes = [keys.size for keys, _ in index._runs]
    assert len(sizes) > 1 and sizes == sorted(sizes, reverse=True)  # runs, merged
    for key, values in expected.items():
        assert index.get(key) == values
    keys = [*expected, 123456789]
    assert index.get_many(keys) == [*expected.values(), []]


def test_dedup_and_near_dup_can_be_turned_off(tmp_path):
    run, _ = planted_run(tmp_path)
    result = curate(run, CurateConfig(near_dup=False))
    assert result.counts == {"exact_duplicate": 5}
    result = curate(run, CurateConfig(dedup=False))
    assert result.counts == {}


# -- decontamination sources ---------------------------------------------------------------------


def _leaky_question() -> str:
    return "Please answer: " + " ".join(BENCHMARK[4]["question"].split()[:14])


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "hf"])
def test_benchmarks_are_read_from_every_kind_of_source(tmp_path, kind):
    items = [{"id": i, "prompt": item["question"]} for i, item in enumerate(BENCHMARK)]
    if kind == "jsonl":
        source = tmp_path / "b.jsonl"
        source.write_text("\n".join(json.dumps(i) for i in items) + "\n\n", encoding="utf-8")
    elif kind == "json":
        source = tmp_path / "b.json"
        source.write_text(json.dumps(items), encoding="utf-8")
    elif kind == "csv":
        source = tmp_path / "b.csv"
        with source.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, ["id", "prompt"])
            writer.writeheader()
            writer.writerows(items)
    elif kind == "parquet":
        source = tmp_path / "b.parquet"
        pq.write_table(pa.Table.from_pylist(items), source)
    else:
        import datasets

        datasets.DatasetDict({"test": datasets.Dataset.from_list(items)}).save_to_disk(
            tmp_path / "saved"
        )
    name = f"hf:{tmp_path / 'saved'}" if kind == "hf" else str(source)
    index = load_benchmarks([name], ["question", "prompt"])
    assert index.benchmarks[0].field == "prompt"
    assert index.benchmarks[0].items == 20
    found = index.match(_leaky_question())
    assert found is not None and found.item == 4
    assert found.split == ("test" if kind == "hf" else None)
    assert index.match(english(random.Random(1), 30, 40)) is None


def test_short_benchmark_items_match_whole_and_very_short_ones_not_at_all(tmp_path):
    source = tmp_path / "short.jsonl"
    items = [
        "What is the derivative of the sine function at zero",  # 10 words: matched whole
        "What is two plus two",  # 5 words: too common to mean a leak
    ]
    source.write_text("".join(json.dumps({"question": q}) + "\n" for q in items))
    index = load_benchmarks([str(source)])
    assert index.benchmarks[0].indexed == 1
    hit = index.match("Quick one: what is the derivative of the sine function at zero, exactly?")
    assert hit is not None and hit.item == 0
    assert index.match("First, what is two plus two? Then explain why.") is None
    # nine of the ten words is not the item
    assert index.match("What is the derivative of the sine function at one") is None


def test_ngram_length_is_configurable(tmp_path):
    benchmark = write_benchmark(tmp_path / "bench.jsonl")
    eight_shared = " ".join(BENCHMARK[0]["question"].split()[:8]) + " and so on"
    assert load_benchmarks([str(benchmark)], n=13).match(eight_shared) is None
    assert load_benchmarks([str(benchmark)], n=8).match(eight_shared) is not None


def test_unusable_benchmarks_are_clear_errors(tmp_path):
    bad_field = tmp_path / "q.jsonl"
    bad_field.write_text('{"text": "x"}\n')
    with pytest.raises(CurationError, match=r"no field question .*it has: text"):
        load_benchmarks([str(bad_field)], ["question"])
    with pytest.raises(CurationError, match="does not exist"):
        load_benchmarks([str(tmp_path / "missing.jsonl")])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(CurationError, match="cannot read benchmark file"):
        load_benchmarks([str(broken)])
    with pytest.raises(CurationError, match=r"unknown type \.txt"):
        (tmp_path / "b.txt").write_text("x")
        load_benchmarks([str(tmp_path / "b.txt")])
    with pytest.raises(CurationError, match="not available offline"):
        load_benchmarks(["hf:glan-test/no-such-dataset"])


# -- filters -------------------------------------------------------------------------------------

LONG_ANSWER = (
    "The derivative measures how fast a function changes. We start from the definition of the"
    " limit and simplify the difference quotient step by step until the answer appears."
)


def test_each_filter_removes_its_crafted_row_and_keeps_the_rest(tmp_path):
    rng = random.Random(9)

    def question() -> str:
        return english(rng, 18, 25).capitalize() + "?"

    rows = [
        pair("a-short", question(), "Yes."),
        pair("b-empty-q", "   ", LONG_ANSWER),
        pair("c-truncated", question(), LONG_ANSWER, truncated=True),
        pair("d-refusal", question(), "I'm sorry, but I can't help with that."),
        pair("e-dunno", question(), "Honestly, I don't know the answer to this one."),
        pair(
            "f-leak",
            "What is the capital of France?\nAnswer: Paris is the capital of France.",
            "Paris is the capital of France, on the Seine.",
        ),
        pair(
            "g-german",
            question(),
            "Die Ableitung misst, wie schnell sich eine Funktion ändert. Wir beginnen mit der"
            " Definition des Grenzwerts und vereinfachen den Differenzenquotienten Schritt für"
            " Schritt, bis das Ergebnis erscheint.",
        ),
        *[good_pair(f"k{i}", rng) for i in range(10)],
    ]
    run = make_run(tmp_path, rows)
    result = curate(run, CurateConfig())
    found = removed(run)
    assert {row_id: reason for row_id, (reason, _) in found.items()} == {
        "a-short": "too_short",
        "b-empty-q": "too_short",
        "c-truncated": "truncated",
        "d-refusal": "refusal",
        "e-dunno": "refusal",
        "f-leak": "answer_leak",
        "g-german": "wrong_language",
    }
    assert found["a-short"][1] == {"part": "answer", "chars": 4, "min": 20}
    assert found["d-refusal"][1]["matched"].lower().startswith("i'm sorry")
    assert found["g-german"][1]["detected"] == "de" and found["g-german"][1]["expected"] == "en"
    assert result.rows_kept == 10

    # every filter can be turned off
    result = curate(
        run,
        CurateConfig(
            drop_truncated=False,
            drop_refusals=False,
            drop_leaks=False,
            language="any",
            min_answer_chars=1,
            min_question_chars=0,
        ),
    )
    assert set(removed(run)) == {"b-empty-q"}  # an empty question always goes


def test_refusal_patterns_look_at_the_opening_only_and_can_be_extended():
    refusal = Refusal()
    teaching = (LONG_ANSWER + " ") * 3 + "If you don't know the mass, I don't know of a shortcut."
    assert refusal.check("q", teaching, {}) is None
    assert refusal.check("q", "As an AI language model, I cannot browse.", {}) is not None
    assert refusal.check("q", "죄송하지만 그 질문에는 답변할 수 없습니다.", {}) is not None
    assert Refusal().check("q", "Ask your teacher.", {}) is None
    custom = Refusal([r"ask your teacher"])
    assert custom.check("q", "Ask your teacher.", {}) == {"matched": "Ask your teacher"}
    with pytest.raises(CurationError, match="not a regex"):
        Refusal(["("])


def test_answer_leak_needs_most_of_the_answer_in_the_question():
    leak = AnswerLeak(overlap=0.5)
    question = "Explain why the sky is blue during the day and red at sunset."
    restating = (
        "Why is the sky blue during the day and red at sunset? Sunlight is scattered by air"
        " molecules, and shorter wavelengths scatter far more than longer ones, so blue light"
        " reaches us from every direction; at sunset the path is longer and the blue is lost."
    )
    assert leak.check(question, restating, {}) is None
    worked = "The sky is blue because air scatters short wavelengths of sunlight far more strongly."
    assert leak.check(f"{worked} Why is the sky blue?", worked, {})["overlap"] == 1.0
    assert leak.check("Find x if 2x = 4. \\boxed{2}", "x = 2", {}) == {"marker": "\\boxed{"}
    assert AnswerLeak(overlap=1.0).check(f"{worked[:60]} Why?", worked, {}) is None


def test_language_is_judged_on_prose_and_follows_the_run():
    check = WrongLanguage(language=None, confidence=0.9)
    code_answer = (
        "Use this:\n```python\ndef f(x):\n    return sorted(set(x), key=len)[::-1]\n```\n"
        "It sorts the distinct items by length, longest first, and returns them as a list."
    )
    assert check.check("How do I sort by length in Python?", code_answer, {}) is None
    korean = (
        "도함수는 입력이 변할 때 함수의 출력이 얼마나 빨리 변하는지를 나타냅니다. 극한의 정의에서"
        " 시작하여 차분 몫을 단계적으로 단순화합니다."
    )
    assert check.check("질문", korean, {"language": "Korean"}) is None
    found = check.check("A question", korean, {"language": None})
    assert found == {
        "part": "answer",
        "detected": "ko",
        "confidence": found["confidence"],
        "expected": "en",
    }
    assert WrongLanguage(language="ko", confidence=0.9).check("q", korean, {}) is None
    assert check.check("q", "Too short to judge: ça va?", {}) is None
    with pytest.raises(CurationError, match="not a language the detector knows"):
        WrongLanguage(language="Klingon", confidence=0.9)


def test_too_short_counts_trimmed_characters():
    short = TooShort(min_question_chars=10, min_answer_chars=20)
    assert short.check("What is x?", "x" * 20, {}) is None
    assert short.check("What is x?", "  " + "x" * 19 + "  ", {})["chars"] == 19
    assert short.check("Why?", "x" * 20, {}) == {"part": "question", "chars": 4, "min": 10}


# -- the record: kept, never touching raw data, replaced on re-run --------------------------------


def test_curation_never_touches_the_generated_data_and_a_rerun_replaces_it(tmp_path):
    run, _ = planted_run(tmp_path)
    before = raw_digest(run)
    first = curate(run, CurateConfig())
    second = curate(run, CurateConfig(near_dup=False))
    assert raw_digest(run) == before
    assert first.counts["near_duplicate"] == 5 and "near_duplicate" not in second.counts

    store = Store.open(run)
    log = CurationLog(store)
    assert log.latest().id == second.id
    # only the curation in force keeps its removals; the runs themselves stay as history
    runs = store.db.execute("SELECT COUNT(*) FROM curation_runs").fetchone()[0]
    kept_for = {r for (r,) in store.db.execute("SELECT DISTINCT run_id FROM curation_removed")}
    store.close()
    assert runs == 2 and kept_for == {second.id}
    assert len(removed(run)) == 5


def test_an_interrupted_curation_leaves_the_previous_one_in_force(tmp_path, monkeypatch):
    run, _ = planted_run(tmp_path)
    done = curate(run, CurateConfig())
    before = removed(run)
    assert len(before) == done.removed == 10

    def stop(seen: int, removed_so_far: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_PROGRESS_EVERY", 50)
    monkeypatch.setattr(results, "_BATCH", 1)  # the stopped run has written removals already
    with pytest.raises(KeyboardInterrupt):
        curate(run, CurateConfig(dedup=False, min_answer_chars=10_000), progress=stop)
    store = Store.open(run)
    assert CurationLog(store).latest().id == done.id
    store.close()
    assert removed(run) == before
    # the next curation clears the stopped one away
    curate(run, CurateConfig(dedup=False))
    store = Store.open(run)
    assert store.db.execute("SELECT COUNT(*) FROM curation_runs").fetchone()[0] == 2
    store.close()


# -- the command line ------------------------------------------------------------------------------


def test_cli_curate_prints_counts_per_reason(tmp_path, cli):
    run, _ = planted_run(tmp_path)
    benchmark = write_benchmark(tmp_path / "bench.jsonl")
    result = cli("curate", str(run), "--decontaminate", str(benchmark))
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "3" in lines["decontaminated"] and "5" in lines["exact_duplicate"]
    assert "5" in lines["near_duplicate"] and "200" in lines["kept"]
    assert "213 pairs checked, 13 removed, 200 kept" in result.stdout
    assert "bench.jsonl: 20 items from field 'question'" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["curate", "{tmp}/nowhere"], "is not a glan run directory"),
        (["curate", "{run}", "--decontaminate", "{tmp}/none.jsonl"], "does not exist"),
        (
            ["curate", "{run}", "--decontaminate", "{bench}", "--benchmark-field", "query"],
            "has no field query",
        ),
        (["curate", "{run}", "--near-dup-threshold", "2"], "--near-dup-threshold"),
    ],
)
def test_cli_curate_errors_are_one_line(tmp_path, cli, args, message):
    run = make_run(tmp_path / "run", [good_pair("a", random.Random(1))])
    bench = write_benchmark(tmp_path / "bench.jsonl")
    values = {"tmp": tmp_path, "run": run, "bench": bench}
    result = cli(*[arg.format(**values) for arg in args])
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
