"""``glan export``: the dataset in the layout a trainer reads, with a held-out test split.

Layouts (``format``): chat ``messages`` (OpenAI/TRL style), ``sharegpt`` (``conversations`` with
``from``/``value``) and ``alpaca`` (``instruction``/``input``/``output``). Every layout keeps the
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
way from its Parquet parts (rows/); it has no curation.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from glan.curation.errors import require
from glan.run import ray_parts as ray_run
from glan.run.curation import CuratedRows, CurationRun
from glan.run.parts import RunLocation, store_dir
from glan.run.store import DB_NAME, Store
from glan.stages.answers import META_KEYS

FORMATS = ("messages", "sharegpt", "alpaca")
TARGETS = ("jsonl", "parquet", "hf")
MANIFEST = "glan-export.json"
LINEAGE = META_KEYS  # every meta key becomes a column
_LISTS = ("sessions", "key_concepts")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}
_BATCH = 5000  # rows per Parquet write: ~15 MB of text in memory at a time


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

    @property
    def rows(self) -> int:
        return sum(self.splits.values())


class Rows(Protocol):
    """The pairs to export, iterable more than once: a ``CuratedRows`` (a local run) or a
    ``ParquetRows`` (a Ray run)."""

    @property
    def curation(self) -> CurationRun | None: ...

    @property
    def removed(self) -> int: ...

    @property
    def uncurated(self) -> int: ...

    def __iter__(self) -> Iterator[dict[str, Any]]: ...


# -- layouts ------------------------------------------------------------------------------------


def lineage(row: dict[str, Any]) -> dict[str, Any]:
    """The row's lineage as flat, typed columns. A missing text is "" rather than null: JSON
    readers (datasets' among them) take a column's type from its first rows, and a column that
    starts null cannot take a string later."""
    meta = row.get("meta") or {}
    values: dict[str, Any] = {}
    for key in LINEAGE:
        value = meta.get(key)
        if key in _LISTS:
            values[key] = [str(v) for v in value or []]
        elif key == "truncated":
            values[key] = bool(value)
        elif key == "seed":
            values[key] = None if value is None else int(value)
        else:
            values[key] = "" if value is None else str(value)
    return values


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": str(m.get("role")), "content": str(m.get("content") or "")}
        for m in row.get("messages") or []
    ]


def _content(messages: list[dict[str, str]], role: str) -> str:
    return next((m["content"] for m in messages if m["role"] == role), "")


def to_messages(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "messages": _messages(row), **lineage(row)}


def to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    conversations = [
        {"from": _SHAREGPT_ROLES.get(m["role"], m["role"]), "value": m["content"]}
        for m in _messages(row)
    ]
    return {"id": row["id"], "conversations": conversations, **lineage(row)}


def to_alpaca(row: dict[str, Any]) -> dict[str, Any]:
    messages = _messages(row)
    return {
        "id": row["id"],
        "instruction": _content(messages, "user"),
        "input": "",
        "output": _content(messages, "assistant"),
        **lineage(row),
    }


LAYOUTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "messages": to_messages,
    "sharegpt": to_sharegpt,
    "alpaca": to_alpaca,
}


def arrow_schema(layout: str) -> Any:
    """The Parquet/Arrow schema of a layout; explicit, so every shard has the same one (a shard
    whose ``language`` happens to be all null would otherwise get a column of type null)."""
    pa = require("pyarrow", "curate")
    text = pa.string()
    turns = {
        "messages": [
            pa.field("messages", pa.list_(pa.struct([("role", text), ("content", text)])))
        ],
        "sharegpt": [
            pa.field("conversations", pa.list_(pa.struct([("from", text), ("value", text)])))
        ],
        "alpaca": [
            pa.field("instruction", text),
            pa.field("input", text),
            pa.field("output", text),
        ],
    }[layout]
    types = {"sessions": pa.list_(text), "key_concepts": pa.list_(text), "seed": pa.int64()}
    types["truncated"] = pa.bool_()
    columns = [pa.field(name, types.get(name, text)) for name in LINEAGE]
    return pa.schema([pa.field("id", text), *turns, *columns])


# -- the test split -----------------------------------------------------------------------------


def _priority(seed: int, row_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose_test(
    rows: Rows, per_discipline: int, seed: int
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


# -- writing ------------------------------------------------------------------------------------


class RecordWriter(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = path.open("wb")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        self._file.close()


class ParquetWriter:
    def __init__(self, path: Path, schema: Any) -> None:
        self._pa = require("pyarrow", "curate")
        parquet = require("pyarrow.parquet", "curate")
        self._schema = schema
        self._writer = parquet.ParquetWriter(path, schema)
        self._buffer: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(self._pa.Table.from_pylist(self._buffer, schema=self._schema))
            self._buffer = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


class ShardedWriter:
    """One split's rows across ``ceil(total / shard_size)`` files named the Hub's way."""

    def __init__(
        self,
        directory: Path,
        split: str,
        suffix: str,
        total: int,
        shard_size: int,
        open_file: Callable[[Path], RecordWriter],
    ) -> None:
        self.shards = max(1, -(-total // shard_size))
        self.paths = [
            directory
            / (
                f"{split}.{suffix}"
                if self.shards == 1
                else f"{split}-{i:05d}-of-{self.shards:05d}.{suffix}"
            )
            for i in range(self.shards)
        ]
        self._shard_size = shard_size
        self._open = open_file
        self._written = 0
        self._current: RecordWriter | None = None
        self._index = -1

    def write(self, record: dict[str, Any]) -> None:
        if self._current is None or self._written == self._shard_size:
            self._next()
        assert self._current is not None
        self._current.write(record)
        self._written += 1

    def _next(self) -> None:
        if self._current is not None:
            self._current.close()
        self._index = min(self._index + 1, self.shards - 1)
        self._current = self._open(self.paths[self._index])
        self._written = 0

    def close(self) -> list[Path]:
        if self._current is None:  # an empty split is still one (empty) file
            self._next()
        assert self._current is not None
        self._current.close()
        return self.paths[: self._index + 1]


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
) -> ExportResult:
    """Write the run's pairs to ``out`` (default RUN/export/FORMAT-TO); see the module doc."""
    state = store_dir(run_dir)  # where glan.db is: the run directory unless it is a URI
    _check_options(run_dir, state, format, to, shard_size, test_per_discipline, push_to_hub)
    token = _hub_token() if push_to_hub else None
    if out is None and "://" in str(run_dir):
        raise ExportError(f"exporting from {run_dir} needs --out DIR, a local directory")
    target = Path(out) if out is not None else state / "export" / f"{format}-{to}"
    _check_target(target)
    store = Store.open(state, readonly=True)
    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        rows: Rows = (
            ray_run.ParquetRows(RunLocation.of(str(run_dir)))
            if ray_run.is_ray_run(store)
            else CuratedRows(store, use_curation=use_curation)
        )
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
        files = _write_splits(rows, scratch, format, to, shard_size, splits, test_ids)
        result.splits = splits
        if to == "hf":
            files = _to_datasets(scratch, files, format, push_to_hub, private, token)
            result.pushed_to = push_to_hub
        result.files = sorted(str(path.relative_to(scratch)) for path in files)
        _write_manifest(scratch, result, run_dir, test_per_discipline, seed)
        _install(scratch, target)
        return result
    finally:
        store.close()
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def _check_options(
    run_dir: str | Path,
    state: Path,
    format: str,
    to: str,
    shard_size: int,
    test_per_discipline: int,
    push_to_hub: str | None,
) -> None:
    if not (state / DB_NAME).is_file():
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


def _write_splits(
    rows: Rows,
    directory: Path,
    layout: str,
    to: str,
    shard_size: int,
    splits: dict[str, int],
    test_ids: set[str],
) -> list[Path]:
    make = LAYOUTS[layout]
    suffix = "jsonl" if to == "jsonl" else "parquet"
    if suffix == "parquet":
        schema = arrow_schema(layout)

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
    layout: str,
    push_to_hub: str | None,
    private: bool,
    token: str | None,
) -> list[Path]:
    """A DatasetDict from the Parquet files, saved to disk (and pushed when asked)."""
    datasets = require("datasets", "hf")
    datasets.disable_progress_bars()
    features = datasets.Features.from_arrow_schema(arrow_schema(layout))
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
