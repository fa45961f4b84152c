"""The fast curation gives the verdicts the previous one gave (``legacy_curation`` keeps it):
each check on a generated corpus of awkward pairs, MinHash band keys against datasketch's, and a
whole curate() (one process and a pool of workers) against the old order of judging."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from typing import Any

import numpy as np
import pytest

import legacy_curation as legacy
from glan.curation import CurateConfig, CurationError, curate, runner
from glan.curation import filters as fast
from glan.curation.decontaminate import load_benchmarks
from glan.curation.dedup import NearDuplicates
from glan.curation.language import prose
from glan.curation.minhash import lsh_params, minhash_permutations
from glan.curation.text import normalise, words
from glan.testing.fake_teacher import _prose, _sentence
from test_curation import make_run, pair, removed

SAMPLES = {
    "de": "Die Ableitung misst, wie schnell sich eine Funktion ändert. Wir beginnen mit der"
    " Definition des Grenzwerts und vereinfachen den Differenzenquotienten Schritt für Schritt.",
    "fr": "La dérivée mesure la vitesse à laquelle une fonction change. Nous partons de la"
    " définition de la limite et simplifions le quotient étape par étape.",
    "es": "La derivada mide la rapidez con la que cambia una función. Partimos de la definición"
    " del límite y simplificamos el cociente paso a paso hasta obtener el resultado.",
    "ru": "Производная показывает, как быстро меняется функция. Мы начинаем с определения"
    " предела и шаг за шагом упрощаем разностное отношение.",
    "ko": "도함수는 입력이 변할 때 함수의 출력이 얼마나 빨리 변하는지를 나타냅니다. 극한의 정의에서"
    " 시작하여 차분 몫을 단계적으로 단순화합니다.",
    "ja": "導関数は、入力が変わるときに関数の出力がどれだけ速く変わるかを表します。極限の定義から"
    "始めて、差分商を段階的に簡単にしていきます。",
    "zh": "导数表示当输入变化时函数的输出变化得有多快。我们从极限的定义出发，一步一步地化简差商，"
    "直到得到结果。",
}
HARD = [
    "日本国憲法第九条平和主義原則解釈論争歴史的経緯概要説明",  # kanji only
    "Müller, Schröder and Dvořák met Łukasiewicz at the Société Générale in Zürich for tea.",
    "Compute d/dx sin(x) cos(x) tan(x) for x = π/4; then ∫ e^x dx from 0 to 1.",
    "ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok",
]
REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "  ...I AM AFRAID this is beyond me.",
    "Je suis désolé, je ne peux pas répondre.",
    "JE SUIS DÉSOLÉ, non.",
    "Es tut mir leid, das weiß ich nicht.",
    "As an AI language model, I do not have opinions.",
    "ＡＳ ＡＮ ＡＩ assistant I cannot say.",  # full width: Python's re does not match it
    "I ＫNOW it: I don't know.",
    "ſorry? I'm not sure what you mean.",
    "İ don't know.",
    "죄송하지만 답변드릴 수 없습니다.",
    "我无法回答这个问题。",
    "申し訳ありませんが、お答えできません。",
    "There is insufficient information to determine the answer.",
    "Honestly, i dont know.",
]


def corpus(seed: int, count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(question, answer, meta) of every awkward kind the checks meet."""
    rng = random.Random(seed)
    out: list[tuple[str, str, dict[str, Any]]] = []
    for _ in range(count):
        question = " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
        answer = "\n\n".join(_prose(rng) for _ in range(rng.randint(1, 12)))
        draw = rng.random()
        if draw < 0.1:
            answer = rng.choice(REFUSALS) + " " + answer
        elif draw < 0.2:  # most of the answer in the question, or part of it
            share = rng.choice((0.2, 0.45, 0.5, 0.55, 0.9, 1.0))
            question += " " + answer[: int(len(answer) * share)]
        elif draw < 0.25:
            question += rng.choice(
                ("\nAnswer: 42", "\n**Final answer**: x", " \\boxed{3}", " \\BOXED{7}", "\n정답：5")
            )
        elif draw < 0.4:
            answer = rng.choice(list(SAMPLES.values()) + HARD) + " " + answer[: rng.randint(0, 300)]
        elif draw < 0.5:  # code, formulas, links, numbers
            answer += "\n```python\nprint(1)\n```\n$x^2$ \\(y\\) https://example.org/a_b 3.14"
        elif draw < 0.6:  # not NFKC, combining marks, full width, odd spaces at piece borders
            answer = answer.replace("e", "e\u0301", 40).replace("a", "ａ", 40)
            answer = answer.replace(" ", rng.choice((" \u0308", "\u00a0", " \u3000 ")), 60)
            question = question.replace("o", "ö", 5).upper()
        elif draw < 0.65:
            answer = answer[: rng.randint(0, 30)]
        language = rng.choice((None, None, None, "English", "de", "ko", "Japanese", "zh"))
        out.append((question, answer, {"language": language, "truncated": rng.random() < 0.05}))
    return out


def test_text_clean_up_is_unchanged():
    rng = random.Random(2)
    alphabet = "abc XYZ_-!?.,'\t\n\u00a0\u3000가나 日本 ﬁ ＡＢ ½ ² e\u0301 İ ß Σ ٣ ๓"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(3000)]
    texts += [q + "\n" + a for q, a, _ in corpus(3, 200)]
    texts += ["a" * 30 + " \n\t" * 20 + "b" * 40, "x " * 60, "y" * 90]
    for text in texts:
        assert words(text) == legacy.words(text)
        assert normalise(text) == legacy.normalise(text)
        whole = legacy.prose(text)
        assert prose(text) == whole
        for limit in (1, 10, 40, 2000):  # a beginning of the prose, at least limit long
            head = prose(text, limit)
            assert whole.startswith(head) and len(head) >= min(limit, len(whole)), (text, limit)


def test_each_filter_gives_the_verdicts_it_gave():
    old = [
        legacy.TooShort(10, 20),
        legacy.Truncated(),
        legacy.Refusal(["ask your teacher"]),
        legacy.AnswerLeak(0.5),
        legacy.WrongLanguage(None, 0.9),
        legacy.WrongLanguage("de", 0.9),
    ]
    new = [
        fast.TooShort(10, 20),
        fast.Truncated(),
        fast.Refusal(["ask your teacher"]),
        fast.AnswerLeak(0.5),
        fast.WrongLanguage(None, 0.9),
        fast.WrongLanguage("de", 0.9),
    ]
    cases = corpus(1, 1500)
    removed_by = dict.fromkeys(range(len(old)), 0)
    for question, answer, meta in cases:
        for i, (before, after) in enumerate(zip(old, new, strict=True)):
            verdict = before.check(question, answer, meta)
            assert after.check(question, answer, meta) == verdict, (before.reason, question)
            removed_by[i] += verdict is not None
    assert all(removed_by.values())  # every check removed something, and kept something
    assert all(count < len(cases) for count in removed_by.values())


def test_the_language_check_is_the_same_with_and_without_its_fast_pass():
    texts = list(SAMPLES.items()) + [("en", text) for text in HARD]
    texts += [("en", _prose(random.Random(i))) for i in range(40)]
    with_fast = fast.WrongLanguage(None, 0.9)
    without = fast.WrongLanguage(None, 0.9)
    without.fast.languages = frozenset()
    before = legacy.WrongLanguage(None, 0.9)
    assert with_fast.fast.languages, "eldc is installed with the curate extra"
    verdicts = []
    for own, text in texts:
        for expected in ("en", "de", "ko", "ja", "zh", "fr", own):
            meta = {"language": expected}
            verdict = before.check(text, text, meta)
            assert with_fast.check(text, text, meta) == verdict
            assert without.check(text, text, meta) == verdict
            verdicts.append(verdict)
    assert any(v is None for v in verdicts) and any(v is not None for v in verdicts)


def test_the_refusal_pre_check_misses_nothing_python_matches():
    """RE2's stand-ins for Python's \\W and IGNORECASE letters cover every code point."""
    re2 = pytest.importorskip("re2")
    every = "".join(
        chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and chr(c) not in "\n"
    )
    assert len(re2.findall(fast.loose_refusal(r"\W"), every)) == len(every)
    letters = {c for p in fast.REFUSALS for c in p if c.isalpha()}
    assert "i" in letters and "é" in letters and "죄" in letters
    for letter in letters:
        python_same = set(re.findall(letter, every, re.IGNORECASE))
        re2_same = set(re2.findall("(?i)" + fast.loose_refusal(letter), every))
        assert python_same <= re2_same, letter
    for pattern in fast.REFUSALS:  # each loosened pattern is valid RE2 on its own
        re2.compile("(?i)" + fast.loose_refusal(pattern))


def test_minhash_band_keys_are_datasketchs():
    rng = random.Random(4)
    alphabet = "abcdefghij klmnop 가나다 日本語 ÄÖ"
    texts = [
        normalise(
            "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 3, 5, 7, 60, 400))))
        )
        for _ in range(600)
    ]
    for shingle, num_perm, threshold in ((5, 128, 0.8), (1, 16, 0.5), (3, 256, 0.9), (9, 64, 0.7)):
        kwargs = {"threshold": threshold, "shingle": shingle, "num_perm": num_perm, "text_of": str}
        old = legacy.LegacyNearDuplicates(**kwargs)
        new = NearDuplicates(**kwargs)
        keys, banded = new.band_keys(texts)  # what screening workers compute
        for i, (text, probe) in enumerate(zip(texts, new.probe_many(texts), strict=True)):
            expected = old.probe(text)
            assert probe.bands == expected.bands
            assert np.array_equal(probe.shingles, expected.shingles)
            assert probe.shingles.dtype == expected.shingles.dtype
            assert (keys[i].tolist() if banded[i] else []) == expected.bands


def test_lsh_bands_and_permutations_are_datasketchs():
    """Chosen without importing datasketch (and scipy), the same as datasketch chooses."""
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(9)
    configs = [(t / 100, n) for t in range(50, 100, 5) for n in (16, 64, 128)]
    configs += [(round(rng.uniform(0.05, 0.99), 3), rng.randint(16, 200)) for _ in range(8)]
    configs += [(0.8, 256), (0.9, 512), (0.1, 16)]
    for threshold, num_perm in configs:
        lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        assert lsh_params(threshold, num_perm) == (lsh.b, lsh.r), (threshold, num_perm)
    for num_perm in (16, 128, 1024):
        a, b = minhash_permutations(num_perm, 1)
        expected = datasketch.MinHash(num_perm=num_perm, seed=1).permutations
        assert a.dtype == b.dtype == np.uint32
        assert np.array_equal(a, expected[0]) and np.array_equal(b, expected[1])


def test_too_few_bands_is_a_curation_error():
    with pytest.raises(CurationError, match="fewer than 2 LSH bands"):
        NearDuplicates(threshold=1.0, shingle=5, num_perm=16, text_of=str)


def planted_rows(count: int) -> list[dict[str, Any]]:
    rng = random.Random(6)
    rows = []
    for i, (question, answer, meta) in enumerate(corpus(5, count)):
        rows.append(pair(f"r{i:05d}", question, answer, **meta))
        if rng.random() < 0.15 and rows:  # an exact or near copy of an earlier question
            base = rng.choice(rows)["messages"][0]["content"]
            parts = base.split()
            if rng.random() < 0.5 and len(parts) > 10:
                parts[len(parts) // 2] = "astronomy"
                copy = " ".join(parts)
            else:
                copy = base.upper() + "!"
            rows.append(pair(f"c{i:05d}", copy, _prose(rng)))
    rng.shuffle(rows)  # output order is not id order
    return rows


@pytest.mark.parametrize("workers", [1, 2])
def test_curate_removes_what_it_removed_before(tmp_path, monkeypatch, workers):
    rows = planted_rows(400)
    benchmark = tmp_path / "bench.jsonl"
    items = [row["messages"][0]["content"] for row in rows[::37]]
    benchmark.write_text("".join(json.dumps({"question": q[:200]}) + "\n" for q in items))
    run = make_run(tmp_path / "run", rows)
    monkeypatch.setattr(runner, "_POOL_MIN_ROWS", 0)  # a pool even for this small run
    monkeypatch.setattr(runner, "_CHUNK", 16)  # many chunks, several in flight
    monkeypatch.setattr(runner, "_DEDUP_BATCH", 7)
    result = curate(run, CurateConfig(benchmarks=[str(benchmark)], workers=workers))

    config = CurateConfig()
    expected = legacy.legacy_removals(
        list(enumerate(rows, 1)),
        [
            legacy.TooShort(config.min_question_chars, config.min_answer_chars),
            legacy.Truncated(),
            legacy.Refusal(),
            legacy.AnswerLeak(config.leak_overlap),
            legacy.WrongLanguage(None, config.language_confidence),
        ],
        load_benchmarks([str(benchmark)]),
    )
    assert removed(run) == expected
    reasons = {reason for reason, _ in expected.values()}
    assert {"decontaminated", "exact_duplicate", "near_duplicate", "refusal"} <= reasons
    assert {"answer_leak", "wrong_language", "too_short", "truncated"} <= reasons
    assert result.rows_in == len(rows) and result.removed == len(expected)


def test_screening_in_a_pool_stops_cleanly_when_interrupted(tmp_path, monkeypatch):
    rows = [
        pair(
            f"r{i:04d}",
            f"Question number {i} about {_sentence(random.Random(i))}",
            _prose(random.Random(i)),
        )
        for i in range(300)
    ]
    run = make_run(tmp_path / "run", rows)
    monkeypatch.setattr(runner, "_POOL_MIN_ROWS", 0)
    monkeypatch.setattr(runner, "_CHUNK", 8)
    monkeypatch.setattr(runner, "_PROGRESS_EVERY", 100)

    def stop(seen: int, removed_so_far: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curate(run, CurateConfig(workers=2), progress=stop)
    assert curate(run, CurateConfig(workers=2)).rows_in == 300


def test_nfkc_and_case_folding_do_not_reach_across_a_space():
    """What AnswerLeak's piecewise reading of an answer relies on."""
    every = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for before in ("a", "e", "\u0301", "가", "ｱ", "I"):
        for after in every[::7]:
            text = before + " " + after
            whole = unicodedata.normalize("NFKC", text).casefold()
            parts = (
                unicodedata.normalize("NFKC", before).casefold()
                + unicodedata.normalize("NFKC", " " + after).casefold()
            )
            assert whole == parts, repr(text)


def test_hash_index_lookups_made_ahead_see_what_is_added_after(monkeypatch):
    from glan.curation import dedup as dedup_module
    from glan.curation.dedup import HashIndex

    monkeypatch.setattr(dedup_module, "_BUFFER", 5)  # runs are flushed and merged meanwhile
    rng = random.Random(8)
    index = HashIndex()
    expected: dict[int, list[int]] = {}
    keys = [rng.getrandbits(64) for _ in range(30)]
    for value in range(400):
        if value % 50 == 0:
            index.end_prefetch()
            index.prefetch(rng.sample(keys, 12))
        chosen = rng.sample(keys, 3)
        for key in chosen:
            assert index.get(key) == expected.get(key, [])
        index.add_many(chosen, value)
        for key in chosen:
            expected.setdefault(key, []).append(value)
    index.end_prefetch()
    assert index.get_many(keys) == [expected.get(key, []) for key in keys]


@pytest.mark.parametrize("bits", [22, 3])
def test_rows_sharing_a_key_are_found_a_part_at_a_time(monkeypatch, bits):
    from glan.curation import dedup as dedup_module

    monkeypatch.setattr(dedup_module, "_SORT_BITS", bits)  # 3: many parts of 8 keys
    rng = np.random.default_rng(3)
    rows = 300
    pool = rng.integers(0, 2**64 - 1, size=250, dtype=np.uint64, endpoint=True)
    columns = []
    for _ in range(4):
        owners = np.sort(rng.choice(rows, size=200, replace=False))
        columns.append((rng.choice(pool, size=owners.size), owners))
    found = dedup_module._sharing(np, columns, rows)
    expected = np.zeros(rows, dtype=bool)
    entries = [
        (int(value), int(owner))
        for values, owners in columns
        for value, owner in zip(values, owners, strict=True)
    ]
    counts: dict[int, int] = {}
    for value, _ in entries:
        counts[value] = counts.get(value, 0) + 1
    for value, owner in entries:
        expected[owner] |= counts[value] > 1
    assert found.tolist() == expected.tolist()
    assert 0 < found.sum() < rows


def test_py3langids_model_from_glans_cache_is_py3langids(tmp_path, monkeypatch):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from glan.curation import language

    monkeypatch.setenv("GLAN_CACHE", str(tmp_path / "cache"))
    expected = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def not_this_way(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("py3langid's own loading was used")

    with monkeypatch.context() as patched:
        patched.setattr(LanguageIdentifier, "from_model_file", not_this_way)
        made = language.load_identifier()  # unpacks the model and caches it
        cached = list((tmp_path / "cache").glob("py3langid-model-*"))
        assert len(cached) == 1 and (cached[0] / "ptc.npy").is_file()
        again = language.load_identifier()  # from the cache
    texts = [*SAMPLES.values(), *HARD, _prose(random.Random(1))]
    for found in (made, again):
        assert type(found) is LanguageIdentifier
        for name in ("nb_ptc", "nb_pc"):
            same = getattr(found, name) == getattr(expected, name)
            assert same.all() and getattr(found, name).dtype == getattr(expected, name).dtype
        for name in ("nb_classes", "tk_nextmove", "tk_row", "tk_output", "_rowbase"):
            assert getattr(found, name) == getattr(expected, name), name
        assert [found.classify(t) for t in texts] == [expected.classify(t) for t in texts]
    (cached[0] / "nextmove.npy").write_bytes(b"not an array")  # a broken cache: made again
    assert language.load_identifier().tk_nextmove == expected.tk_nextmove
    with monkeypatch.context() as patched:
        patched.setattr(LanguageIdentifier, "from_model_file", not_this_way)
        assert language.load_identifier().tk_nextmove == expected.tk_nextmove
    monkeypatch.setenv("GLAN_CACHE", "/proc/no-such-place")  # nowhere to write: still loads
    assert language.load_identifier().nb_classes == expected.nb_classes
