"""``glan curate`` on pairs of realistic length, next to ``glan export`` of the same run.

    python benchmarks/curate_realistic.py                    # 50,000 pairs, /tmp/glan-curate-50000
    python benchmarks/curate_realistic.py --rows 20000 --previous f33de30  # and an older curate

Builds a run directory whose store holds N pairs written directly (not what is measured): questions
of about 300 characters and answers of 1-4 kB of technical English (sentences of the standard
library's docstrings; a fifth of the answers with a code block, a fifth with formulas), with
planted exact duplicates (3%: an earlier question re-cased, re-spaced and re-punctuated), planted
near duplicates (3%: one word of an earlier question changed) and a few bad pairs (refusals,
truncated, too short, German answers, questions that give their answer away: 0.5% each). The store
is reused when it already holds the same rows (``--rebuild`` to make it again).

Then, each in a fresh process: ``glan export RUN --to jsonl --ignore-curation`` (every pair, so
the work does not depend on an earlier curate), ``glan curate RUN`` with its defaults, and with
``--previous REF`` the ``glan curate`` of that git commit (its ``src/`` from ``git archive``, run
against the same store) and whether its removals are the same. Prints wall time, pairs/s, peak RSS
(of the main process and of all its processes together, sampled from /proc), and what was found of
each planted kind.

Not a test: pytest collects ``tests/`` only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import orjson

from glan.curation.dedup import NearDuplicates
from glan.curation.text import normalise
from glan.run.store import Store

REPO = Path(__file__).resolve().parent.parent
THRESHOLD = 0.8
EXACT_SHARE = NEAR_SHARE = 0.03
BAD_SHARE = 0.005  # of each bad kind
PAGE_KB = os.sysconf("SC_PAGESIZE") // 1024
GERMAN = (
    "Die Ableitung misst, wie schnell sich eine Funktion ändert, wenn sich ihr Argument ändert.",
    "Wir beginnen mit der Definition des Grenzwerts und vereinfachen den Differenzenquotienten.",
    "Schritt für Schritt erhalten wir so das Ergebnis, das wir am Anfang vermutet haben.",
    "Diese Methode funktioniert auch für Produkte und Quotienten von Funktionen sehr gut.",
    "Am Ende prüfen wir das Ergebnis an einem einfachen Beispiel mit konkreten Zahlen.",
)
REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide an answer to this question.",
    "I don't know the answer to this question.",
)
CODE = "\n\n```python\ndef mean(values):\n    return sum(values) / len(values)\n```\n\n"
FORMULA = " So $E = mc^2$, and by \\(a^2 + b^2 = c^2\\) the side is $\\sqrt{{{0}}}$. "


def english_sentences(limit: int = 20_000) -> list[str]:
    """Sentences of the standard library's docstrings: technical English, many thousands."""
    found: dict[str, None] = {}
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtledemo", "test", "lib2to3"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
            name = info.name
            if name.startswith("_") or name in skip or name not in sys.stdlib_module_names:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # a module that does not import here is just left out
                continue
            docs = [module.__doc__] + [getattr(v, "__doc__", None) for v in vars(module).values()]
            for doc in docs:
                if not isinstance(doc, str):
                    continue
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    if 40 <= len(sentence) <= 240 and sentence[0].isupper():
                        found.setdefault(sentence)
            if len(found) >= limit:
                break
    return list(found)


def question(rng: random.Random, sentences: list[str]) -> str:
    text = ""
    while len(text) < rng.randint(220, 360):
        text += rng.choice(sentences) + " "
    return "Explain the following. " + text.strip() + " Why is that?"


def answer(rng: random.Random, sentences: list[str]) -> str:
    target = rng.randint(1000, 4000)
    parts: list[str] = []
    size = 0
    while size < target:
        paragraph = " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 6)))
        parts.append(paragraph)
        size += len(paragraph) + 2
    text = "\n\n".join(parts)
    if rng.random() < 0.2:
        cut = len(text) // 2
        text = text[:cut] + CODE + text[cut:]
    if rng.random() < 0.2:
        text += FORMULA.format(rng.randint(2, 99))
    return text


def row(row_id: str, q: str, a: str, *, truncated: bool = False) -> dict:
    return {
        "id": row_id,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "meta": {
            "field": "Formal Science",
            "sub_field": None,
            "discipline": "Computer Science",
            "subject": "Python",
            "level": "Undergraduate",
            "sessions": ["Session one"],
            "key_concepts": ["modules"],
            "question_type": "basic",
            "question_model": "teacher",
            "answer_model": "teacher",
            "prompt_version": "bench",
            "seed": 0,
            "language": None,
            "syllabus_language": None,
            "question_id": f"q-{row_id}",
            "truncated": truncated,
        },
    }


def build(run: Path, total: int, seed: int) -> dict[str, int]:
    """Write the store directly (one INSERT per row); returns what was planted."""
    rng = random.Random(seed)
    sentences = english_sentences()
    near_check = NearDuplicates(threshold=THRESHOLD, shingle=5, num_perm=128, text_of=str)
    planted = dict.fromkeys(
        ("exact", "near", "near_at_threshold", "refusal", "truncated", "short", "german", "leak"), 0
    )
    bad_kinds = ("refusal", "truncated", "short", "german", "leak")
    store = Store.open(run)
    db = store.db
    db.execute("BEGIN")
    originals: list[str] = []  # questions that copies are made of (clean pairs only)
    now = time.time()
    for seq in range(1, total + 1):
        draw = rng.random()
        kind = "original"
        if originals and draw < EXACT_SHARE:
            kind = "exact"
        elif originals and draw < EXACT_SHARE + NEAR_SHARE:
            kind = "near"
        elif draw < EXACT_SHARE + NEAR_SHARE + BAD_SHARE * len(bad_kinds):
            kind = bad_kinds[int((draw - EXACT_SHARE - NEAR_SHARE) / BAD_SHARE)]
        a = answer(rng, sentences)
        truncated = False
        if kind == "original":
            q, row_id = question(rng, sentences), f"a{seq:08d}"  # originals sort first by id
            if len(originals) < 50_000:
                originals.append(q)
            else:
                originals[rng.randrange(len(originals))] = q
        elif kind == "exact":
            q, row_id = rng.choice(originals).upper().replace(" ", "  ") + "!!", f"b{seq:08d}"
        elif kind == "near":
            base = rng.choice(originals)
            words = base.split()
            words[rng.randrange(1, len(words))] = rng.choice(("really", "exactly", "Python"))
            q, row_id = " ".join(words), f"c{seq:08d}"
            if normalise(q) == normalise(base):
                q += " Indeed."
            one, two = near_check.shingles(normalise(base)), near_check.shingles(normalise(q))
            common = len(set(one.tolist()) & set(two.tolist()))
            planted["near_at_threshold"] += common / (one.size + two.size - common) >= THRESHOLD
        else:
            q, row_id = question(rng, sentences), f"d{seq:08d}"
            if kind == "refusal":
                a = rng.choice(REFUSALS) + " " + a[:200]
            elif kind == "truncated":
                truncated = True
            elif kind == "short":
                a = "Yes."
            elif kind == "german":
                a = " ".join(rng.choice(GERMAN) for _ in range(8))
            else:  # leak
                q = q + "\nAnswer: " + a[:200]
        if kind != "original":
            planted[kind] += 1
        db.execute(
            "INSERT INTO nodes (id, kind, parent_id, root, seq, status, data, result, out_seq,"
            " updated_at) VALUES (?, 'answer', NULL, 'computer-science', ?, 'done', '{}', ?, ?, ?)",
            (row_id, seq, orjson.dumps(row(row_id, q, a, truncated=truncated)).decode(), seq, now),
        )
        if seq % 20_000 == 0:
            db.execute("COMMIT")
            db.execute("BEGIN")
            print(f"  built {seq:,} rows", file=sys.stderr)
    db.execute("COMMIT")
    store.set_meta("benchmark", {"rows": total, "seed": seed, "planted": planted})
    store.commit()
    store.close()
    return planted


def existing(run: Path, total: int, seed: int) -> dict[str, int] | None:
    if not (run / "glan.db").exists():
        return None
    store = Store.open(run)
    info = store.get_meta("benchmark")
    store.close()
    if not info or info.get("rows") != total or info.get("seed") != seed:
        return None
    return info.get("planted")


class PeakRss:
    """Peak resident memory of a process, and of it with all its descendants, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.main = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.main / 1024, self.tree / 1024  # MB

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            sizes = _rss_by_pid()
            family = _descendants(self.pid) | {self.pid}
            self.main = max(self.main, sizes.get(self.pid, 0))
            self.tree = max(self.tree, sum(sizes.get(p, 0) for p in family))


def _rss_by_pid() -> dict[int, int]:
    sizes: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/statm") as file:
                    pages = int(file.read().split()[1])
            except OSError:
                continue
            sizes[int(entry)] = pages * PAGE_KB
    return sizes  # KB


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def timed(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float, float]:
    """Wall seconds, CPU seconds (all its processes) and peak RSS MB (main process, all its
    processes) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peak = PeakRss(process.pid)
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    main, tree = peak.stop()
    if process.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    return seconds, cpu, main, tree


def removals(run: Path) -> dict[str, str]:
    """{row id: reason} of the curation in force."""
    store = Store.open(run)
    found = dict(
        store.db.execute(
            "SELECT row_id, reason FROM curation_removed WHERE run_id ="
            " (SELECT MAX(id) FROM curation_runs WHERE finished_at IS NOT NULL)"
        ).fetchall()
    )
    store.close()
    return found


def summary(found: dict[str, str], planted: dict[str, int]) -> str:
    by = {}
    for row_id, reason in found.items():
        key = f"{row_id[0]}:{reason}"
        by[key] = by.get(key, 0) + 1
    bad = sum(v for k, v in by.items() if k.startswith("d:"))
    planted_bad = sum(planted[k] for k in ("refusal", "truncated", "short", "german", "leak"))
    others = sum(v for k, v in by.items() if k.startswith("a:"))
    return (
        f"exact copies found {by.get('b:exact_duplicate', 0):,} of {planted['exact']:,};"
        f" near copies found {by.get('c:near_duplicate', 0):,} of {planted['near']:,}"
        f" ({planted['near_at_threshold']:,} at Jaccard >= {THRESHOLD});"
        f" bad pairs removed {bad:,} of {planted_bad:,}; originals removed {others:,}"
        f" ({', '.join(f'{k[2:]} {v}' for k, v in sorted(by.items()) if k.startswith('a:'))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="glan curate --workers")
    parser.add_argument("--previous", metavar="REF", help="also time glan curate of this commit")
    options = parser.parse_args()
    run = options.dir or Path(f"/tmp/glan-curate-{options.rows}")

    planted = None if options.rebuild else existing(run, options.rows, options.seed)
    if planted is None:
        run.mkdir(parents=True, exist_ok=True)
        for name in ("glan.db", "glan.db-wal", "glan.db-shm"):
            (run / name).unlink(missing_ok=True)
        started = time.perf_counter()
        planted = build(run, options.rows, options.seed)
        print(f"built {options.rows:,} rows in {time.perf_counter() - started:.0f} s")
    size = (run / "glan.db").stat().st_size / 1e6
    print(f"run: {run} ({size:,.0f} MB), planted: {planted}")
    rows = options.rows
    glan = [sys.executable, "-m", "glan"]

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "export"
        export = [*glan, "export", str(run), "--to", "jsonl", "--ignore-curation"]
        export_s, export_cpu, export_main, _ = timed([*export, "--out", str(out)])
    print(
        f"glan export --to jsonl: {export_s:.1f} s wall ({export_cpu:.1f} s CPU),"
        f" {rows / export_s:,.0f} pairs/s, peak RSS {export_main:,.0f} MB"
    )

    curate = [*glan, "curate", str(run)]
    if options.workers is not None:
        curate += ["--workers", str(options.workers)]
    seconds, cpu, main_mb, tree_mb = timed(curate)
    found = removals(run)
    print(
        f"glan curate: {seconds:.1f} s wall ({cpu:.1f} s CPU), {rows / seconds:,.0f} pairs/s,"
        f" {seconds / export_s:.1f}x export; peak RSS {main_mb:,.0f} MB main process,"
        f" {tree_mb:,.0f} MB with its workers"
    )
    print(f"  {summary(found, planted)}")

    if options.previous:
        with tempfile.TemporaryDirectory() as old:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", options.previous, "src/glan"],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
            env = {**os.environ, "PYTHONPATH": str(Path(old) / "src")}
            old_args = [*glan, "curate", str(run)]
            seconds_old, cpu_old, main_old, _ = timed(old_args, env)
        found_old = removals(run)
        print(
            f"glan curate at {options.previous}: {seconds_old:.1f} s wall ({cpu_old:.1f} s CPU),"
            f" {rows / seconds_old:,.0f} pairs/s, {seconds_old / export_s:.1f}x export;"
            f" peak RSS {main_old:,.0f} MB"
        )
        print(f"  {summary(found_old, planted)}")
        same = found_old == found
        differ = sorted(set(found.items()) ^ set(found_old.items()))
        print(
            f"same removals (row and reason) as {options.previous}: {same}"
            + ("" if same else f"; {len(differ)} differ, e.g. {differ[:5]}")
        )


if __name__ == "__main__":
    main()
