"""Dedup at a million questions: time and peak memory of ``glan curate`` (dedup only).

    python benchmarks/dedup_million.py                 # 1,000,000 rows in /tmp/glan-dedup-1m
    python benchmarks/dedup_million.py --rows 100000   # a quicker look
    python benchmarks/dedup_million.py --all-filters   # also time a full curate (every filter on)

Builds a run directory whose store holds N synthetic pairs (5% planted exact duplicates: the same
question re-cased and re-punctuated; 5% planted near duplicates: one word of 20-60 changed), then
runs ``glan curate`` in a fresh process and reports its wall time, its peak RSS, and how many
planted copies it found and how many other rows it removed. The store is reused when it already
holds N rows (``--rebuild`` to make it again).

Not a test: pytest collects ``tests/`` only.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import orjson

from glan.curation.dedup import NearDuplicates
from glan.curation.text import normalise
from glan.run.store import Store

DUPLICATE_SHARE = 0.05
NEAR_SHARE = 0.05
THRESHOLD = 0.8


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    """Pronounceable made-up words: a vocabulary as large as a real one, so unrelated questions
    share about as little as real ones do."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "qu"]
    words = {"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(size * 2)}
    common = ["the", "of", "and", "a", "in", "to", "is", "how", "what", "why", "explain"]
    return common * 40 + sorted(words)[:size]


def question(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choices(words, k=rng.randint(20, 60))).capitalize() + "?"


def row(row_id: str, text: str) -> bytes:
    return orjson.dumps(
        {
            "id": row_id,
            "messages": [
                {"role": "user", "content": text},
                {"role": "assistant", "content": "An answer long enough to pass the filters."},
            ],
            "meta": {"discipline": "Synthetic", "question_type": "basic", "truncated": False},
        }
    )


def build(run: Path, total: int, seed: int) -> dict[str, int]:
    """Write the store directly (one INSERT per row): the setup is not what is measured."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    near_check = NearDuplicates(threshold=THRESHOLD, shingle=5, num_perm=128, text_of=str)
    originals = int(total * (1 - DUPLICATE_SHARE - NEAR_SHARE))
    store = Store.open(run)
    db = store.db
    db.execute("BEGIN")
    texts: list[str] = []  # a sample to copy from, not all
    planted = {"exact": 0, "near": 0, "near_at_threshold": 0}
    now = time.time()
    for seq in range(1, total + 1):
        if seq <= originals:
            text, row_id = question(rng, words), f"a{seq:08d}"  # originals sort first by id
            if len(texts) < 50_000:
                texts.append(text)
            elif rng.random() < 0.05:
                texts[rng.randrange(len(texts))] = text
        elif rng.random() < DUPLICATE_SHARE / (DUPLICATE_SHARE + NEAR_SHARE):
            base = rng.choice(texts)
            text, row_id = base.upper().replace(" ", "  ") + "!", f"b{seq:08d}"
            planted["exact"] += 1
        else:
            base = rng.choice(texts)
            parts = base.split()
            parts[rng.randrange(len(parts))] = rng.choice(words)
            text, row_id = " ".join(parts), f"c{seq:08d}"
            if normalise(text) == normalise(base):
                text += " indeed"
            planted["near"] += 1
            a, b = near_check.shingles(normalise(base)), near_check.shingles(normalise(text))
            common = len(set(a.tolist()) & set(b.tolist()))
            planted["near_at_threshold"] += common / (a.size + b.size - common) >= THRESHOLD
        db.execute(
            "INSERT INTO nodes (id, kind, parent_id, root, seq, status, data, result, out_seq,"
            " updated_at) VALUES (?, 'answer', NULL, 'synthetic', ?, 'done', '{}', ?, ?, ?)",
            (row_id, seq, row(row_id, text).decode(), seq, now),
        )
        if seq % 100_000 == 0:
            db.execute("COMMIT")
            db.execute("BEGIN")
            print(f"  built {seq:,} rows", file=sys.stderr)
    db.execute("COMMIT")
    store.set_meta("benchmark", {"rows": total, "seed": seed, **planted})
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
    return {k: info[k] for k in ("exact", "near", "near_at_threshold")}


def curate(run: Path, all_filters: bool) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``glan curate`` in a fresh process."""
    args = [sys.executable, "-m", "glan", "curate", str(run)]
    if not all_filters:
        args += [
            "--keep-truncated",
            "--keep-refusals",
            "--keep-leaks",
            "--language",
            "any",
            "--min-question-chars",
            "0",
            "--min-answer-chars",
            "0",
        ]
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"glan curate failed:\n{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(done.stdout)
    # ru_maxrss of children is the largest of any child so far (KB on Linux)
    return seconds, max(peak, before) / 1024


def found(run: Path) -> dict[str, int]:
    store = Store.open(run)
    counts = dict(
        store.db.execute(
            "SELECT substr(r.row_id, 1, 1) || ':' || r.reason, COUNT(*) FROM curation_removed r"
            " JOIN curation_runs c ON c.id = r.run_id WHERE c.finished_at IS NOT NULL"
            " AND c.id = (SELECT MAX(id) FROM curation_runs WHERE finished_at IS NOT NULL)"
            " GROUP BY 1"
        ).fetchall()
    )
    store.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--all-filters", action="store_true")
    options = parser.parse_args()
    run = options.dir or Path(f"/tmp/glan-dedup-{options.rows}")

    planted = None if options.rebuild else existing(run, options.rows, options.seed)
    if planted is None:
        if (run / "glan.db").exists():
            for name in ("glan.db", "glan.db-wal", "glan.db-shm"):
                (run / name).unlink(missing_ok=True)
        started = time.perf_counter()
        planted = build(run, options.rows, options.seed)
        print(f"built {options.rows:,} rows in {time.perf_counter() - started:.0f} s")
    size = (run / "glan.db").stat().st_size / 1e6
    print(f"run: {run} ({size:,.0f} MB), planted: {planted}")

    seconds, peak = curate(run, all_filters=False)
    counts = found(run)
    print(f"dedup only: {seconds:.1f} s wall, peak RSS {peak:,.0f} MB")
    print(
        f"  exact copies found {counts.get('b:exact_duplicate', 0):,} of {planted['exact']:,};"
        f" near copies found {counts.get('c:near_duplicate', 0):,} of {planted['near']:,}"
        f" ({planted['near_at_threshold']:,} of them at Jaccard >= {THRESHOLD});"
        f" originals removed {sum(v for k, v in counts.items() if k.startswith('a:')):,}"
    )
    if options.all_filters:
        seconds, peak = curate(run, all_filters=True)
        print(f"every filter on: {seconds:.1f} s wall, peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
