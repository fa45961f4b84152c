"""``glan export``: the dataset in the layout a trainer reads, with a held-out test split.

Layouts (``format``): chat ``messages`` (OpenAI/TRL style), ``sharegpt`` (``conversations`` with
``from``/``value``) and ``alpaca`` (``instruction``/``input``/``output``; of a conversation, the
first turn only, counted in ``first_turn_only``). Every layout keeps the
lineage columns (field, discipline, subject, level, sessions, key concepts, models, seed, ...) flat
beside the text, so a trainer can filter or weight by them.

Targets (``to``): JSONL, Parquet (sharded: ``train-00000-of-00004.parquet``, the names the
Hugging Face Hub recognises) and a ``datasets`` DatasetDict saved to disk and, when asked, pushed
to the Hub.

What is exported: the curated set when ``glan curate`` has run (its removed pairs left out, and
pairs generated after it left out too, with a warning), else every pair. The test split (the
paper's GLAN-Test: 50 per discipline) takes, in each discipline, the N pairs whose hash of
(seed, id) is smallest: the same seed and data give the same split whatever order the rows are
read in, and choosing needs N ids per discipline in memory, not the rows.

Everything streams: rows are read twice from SQLite (once to choose the test split, once to write)
and written in batches, so memory stays flat at a million rows. A Ray run's rows are read the same
way from its Parquet parts (rows/), through the same run-directory interface.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glan.curation.errors import require
from glan.publish.layouts import (
    FORMATS,
    LAYOUTS,
    arrow_schema,
    review_columns,
    user_turns,
    with_majority_answer,
)
from glan.publish.writers import JsonlWriter, ParquetWriter, RecordWriter, ShardedWriter
from glan.run import is_run, open_run
from glan.run.curation import CuratedRows
from glan.run.store import DB_NAME
from glan.stages.review import Review, reviews

TARGETS = ("jsonl", "parquet", "hf")
MANIFEST = "glan-export.json"


class ExportError(Exception):
    """An export that cannot be done as asked; the message says why."""


@dataclass
class ExportResult:
    out: Path
    format: str
    to: str
    curation: int | None  # the curation run in force, or None when every pair was exported
    removed: int  # pairs left out because curation removed them
    uncurated: int  # pairs left out because they were generated after the curation
    splits: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    test_only: list[str] = field(default_factory=list)  # disciplines with no pairs left to train
    pushed_to: str | None = None
    majority_answers: int = 0  # answers swapped for the majority's (--majority-answers)
    # conversations (--turns > 1) that Alpaca, which has no turns, took the first turn of
    first_turn_only: int = 0

    @property
    def rows(self) -> int:
        return sum(self.splits.values())


# -- the test split -----------------------------------------------------------------------------


def _priority(seed: int, row_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose_test(
    rows: CuratedRows, per_discipline: int, seed: int
) -> tuple[set[str], Counter[str], Counter[str]]:
    """The ids of the test split, with pairs per discipline and test pairs per discipline."""
    heaps: dict[str, list[tuple[int, str]]] = {}
    totals: Counter[str] = Counter()
    for row in rows:
        discipline = str((row.get("meta") or {}).get("discipline"))
        totals[discipline] += 1
        if per_discipline <= 0:
            continue
        heap = heaps.setdefault(discipline, [])
        entry = (-_priority(seed, row["id"]), row["id"])  # a max-heap of the smallest priorities
        if len(heap) < per_discipline:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    chosen = {row_id for heap in heaps.values() for _, row_id in heap}
    return chosen, totals, Counter({d: len(h) for d, h in heaps.items()})


# -- the export ---------------------------------------------------------------------------------


def export(
    run_dir: str | Path,
    *,
    format: str = "messages",
    to: str = "jsonl",
    out: str | Path | None = None,
    shard_size: int = 100_000,
    test_per_discipline: int = 0,
    seed: int = 0,
    push_to_hub: str | None = None,
    private: bool = False,
    use_curation: bool = True,
    majority_answers: bool = False,
) -> ExportResult:
    """Write the run's pairs to ``out`` (default RUN/export/FORMAT-TO); see the module doc.

    A reviewed run (glan judge) gets the review's columns; ``majority_answers`` swaps an answer
    that most extra answers contradict for the majority's."""
    _check_options(run_dir, format, to, shard_size, test_per_discipline, push_to_hub)
    token = _hub_token() if push_to_hub else None
    if out is None and "://" in str(run_dir):
        raise ExportError(f"exporting from {run_dir} needs --out DIR, a local directory")
    target = Path(out) if out is not None else Path(run_dir) / "export" / f"{format}-{to}"
    _check_target(target)
    run = open_run(run_dir)
    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        rows = CuratedRows(run, use_curation=use_curation)
        test_ids, totals, tested = choose_test(rows, test_per_discipline, seed)
        if not totals:
            raise ExportError(f"{run_dir} has no pairs to export")
        result = ExportResult(
            out=target,
            format=format,
            to=to,
            curation=rows.curation.id if rows.curation else None,
            removed=rows.removed,
            uncurated=rows.uncurated,
            test_only=sorted(d for d, n in totals.items() if tested[d] >= n),
        )
        splits = {"train": sum(totals.values()) - len(test_ids), "test": len(test_ids)}
        splits = {name: n for name, n in splits.items() if n or name == "train"}
        scratch.mkdir(parents=True)
        found = reviews(run.store)
        record = _records(format, found, majority_answers)
        files = _write_splits(rows, scratch, record, to, shard_size, splits, test_ids)
        result.first_turn_only = record.cut
        result.splits = splits
        result.majority_answers = record.swapped
        if to == "hf":
            schema = arrow_schema(format, reviewed=bool(found))
            files = _to_datasets(scratch, files, schema, push_to_hub, private, token)
            result.pushed_to = push_to_hub
        result.files = sorted(str(path.relative_to(scratch)) for path in files)
        _write_manifest(scratch, result, run_dir, test_per_discipline, seed)
        _install(scratch, target)
        return result
    finally:
        run.close()
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def _check_options(
    run_dir: str | Path,
    format: str,
    to: str,
    shard_size: int,
    test_per_discipline: int,
    push_to_hub: str | None,
) -> None:
    if not is_run(run_dir):
        raise ExportError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; choose {', '.join(FORMATS)}")
    if to not in TARGETS:
        raise ExportError(f"unknown target {to!r}; choose {', '.join(TARGETS)}")
    if shard_size < 1:
        raise ExportError(f"--shard-size must be at least 1, not {shard_size}")
    if test_per_discipline < 0:
        raise ExportError("--test-per-discipline cannot be negative")
    if push_to_hub and to != "hf":
        raise ExportError("--push-to-hub needs --to hf")


def _hub_token() -> str:
    """Checked before any work: a missing token should not cost a full export first."""
    hub = require("huggingface_hub", "hf")
    token = hub.get_token()
    if not token:
        raise ExportError(
            "pushing to the Hugging Face Hub needs a token: set HF_TOKEN, or run"
            " `hf auth login` (formerly `huggingface-cli login`)"
        )
    return str(token)


def _check_target(target: Path) -> None:
    """Only an empty directory or an earlier export may be replaced."""
    if not target.exists():
        return
    if target.is_file() or (any(target.iterdir()) and not (target / MANIFEST).is_file()):
        raise ExportError(
            f"{target} exists and is not a glan export; pass another --out or remove it"
        )


def _install(scratch: Path, target: Path) -> None:
    _check_target(target)  # again: something may have appeared while we worked
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.rename(target)


class _Records:
    """Rows as records of a layout, with the review's columns when the run was reviewed."""

    def __init__(self, layout: str, found: dict[str, Review], majority: bool) -> None:
        self.make = LAYOUTS[layout]
        self.first_turn_only = layout == "alpaca"  # Alpaca has no turns: it takes the first
        self.cut = 0  # conversations cut to their first turn
        self.schema = lambda: arrow_schema(layout, reviewed=bool(found))
        self.found = found
        self.majority = majority
        self.swapped = 0

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.first_turn_only and user_turns(row) > 1:
            self.cut += 1
        if not self.found:
            return self.make(row)
        review = self.found.get(row["id"])
        swapped = with_majority_answer(row, review) if self.majority else None
        if swapped is not None:
            self.swapped += 1
        record = {**self.make(swapped or row), **review_columns(review)}
        record["majority_answer"] = swapped is not None
        return record


def _records(layout: str, found: dict[str, Review], majority: bool) -> _Records:
    if majority and not any(r.agreement for r in found.values()):
        raise ExportError("--majority-answers needs verified pairs: run glan judge --verify N")
    return _Records(layout, found, majority)


def _write_splits(
    rows: CuratedRows,
    directory: Path,
    make: _Records,
    to: str,
    shard_size: int,
    splits: dict[str, int],
    test_ids: set[str],
) -> list[Path]:
    suffix = "jsonl" if to == "jsonl" else "parquet"
    if suffix == "parquet":
        schema = make.schema()

        def open_file(path: Path) -> RecordWriter:
            return ParquetWriter(path, schema)
    else:
        open_file = JsonlWriter
    # hf builds from Parquet files; the Hub shards again on push, so one file per split is fine
    size = shard_size if to != "hf" else max(1, max(splits.values()))
    writers = {
        split: ShardedWriter(directory, split, suffix, total, size, open_file)
        for split, total in splits.items()
    }
    for row in rows:
        split = "test" if row["id"] in test_ids else "train"
        writers[split].write(make(row))
    return [path for writer in writers.values() for path in writer.close()]


def _to_datasets(
    scratch: Path,
    files: list[Path],
    schema: Any,
    push_to_hub: str | None,
    private: bool,
    token: str | None,
) -> list[Path]:
    """A DatasetDict from the Parquet files, saved to disk (and pushed when asked)."""
    datasets = require("datasets", "hf")
    datasets.disable_progress_bars()
    features = datasets.Features.from_arrow_schema(schema)
    cache = scratch / ".cache"
    by_split: dict[str, list[str]] = {}
    for path in files:
        by_split.setdefault(path.name.split(".")[0].split("-")[0], []).append(str(path))
    dataset = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_parquet(
                paths, split=split, features=features, cache_dir=str(cache)
            )
            for split, paths in by_split.items()
        }
    )
    saved = scratch / "dataset"
    dataset.save_to_disk(str(saved))
    if push_to_hub:
        try:
            dataset.push_to_hub(push_to_hub, private=private, token=token)
        except Exception as error:  # network, auth and Hub errors come in many types
            raise ExportError(f"pushing to {push_to_hub} failed: {error}") from None
    # the DatasetDict is the export: move it up, drop the Parquet files and the cache
    for path in files:
        path.unlink()
    shutil.rmtree(cache, ignore_errors=True)
    for entry in saved.iterdir():
        entry.rename(scratch / entry.name)
    saved.rmdir()
    return [path for path in scratch.rglob("*") if path.is_file()]


def _write_manifest(
    scratch: Path,
    result: ExportResult,
    run_dir: str | Path,
    test_per_discipline: int,
    seed: int,
) -> None:
    manifest = asdict(result)
    manifest.update(
        out=str(result.out),
        run=str(run_dir),
        rows=result.rows,
        test_per_discipline=test_per_discipline,
        seed=seed,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
