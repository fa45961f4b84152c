"""The Parquet side of a run directory, which any machine of a Ray cluster can write.

A Ray run keeps the narrow stages (subjects, syllabi) in ``glan.db`` like a local run, and puts what
the wide stages make beside it, as immutable Parquet parts::

    OUT/rows/*.parquet     the dataset: one finished pair per row (``row_schema``), by Ray Data
    OUT/calls/*.parquet    every paid-for reply of the wide stages (``call_schema``), by the workers
    OUT/failed/*.parquet   items that failed, with why (``failure_schema``); a later row supersedes

``OUT`` is a local path or any URI pyarrow has a filesystem for (``s3://``, ``gs://``, ``hdfs://``).
Parts are only ever added; readers skip files that are not ``*.parquet`` (parts being written).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glan.ids import stable_id
from glan.items import SINGLE_TURN_META
from glan.run.store import DB_NAME

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

ROWS, CALLS, FAILED = "rows", "calls", "failed"
_LISTS = ("sessions", "key_concepts", "followup_kinds")


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - pyarrow comes with every extra that needs this
        raise ImportError('this needs pyarrow: pip install "glan[ray]"') from None
    return pyarrow


@cache
def meta_type(key: str) -> pa.DataType:
    """The Arrow type of a row's meta key (the same one export gives its lineage columns)."""
    pa = _pa()
    if key in _LISTS:
        return pa.list_(pa.string())
    return {"seed": pa.int64(), "turns": pa.int64(), "truncated": pa.bool_()}.get(key, pa.string())


@cache
def row_schema() -> pa.Schema:
    """A pair as the local engine writes it to instructions.jsonl: id, messages, meta. The Ray
    engine makes single-turn pairs only (it refuses --turns above 1), so its meta has no
    conversation keys: parts written before conversations existed have the same schema."""
    pa = _pa()
    text = pa.string()
    return pa.schema(
        [
            pa.field("id", text, nullable=False),
            pa.field("messages", pa.list_(pa.struct([("role", text), ("content", text)]))),
            pa.field(
                "meta", pa.struct([pa.field(key, meta_type(key)) for key in SINGLE_TURN_META])
            ),
        ]
    )


@cache
def call_schema() -> pa.Schema:
    """A paid-for reply, as the ``calls`` table of glan.db holds it."""
    pa = _pa()
    return pa.schema(
        [
            ("key", pa.string()),
            ("node_id", pa.string()),
            ("stage", pa.string()),
            ("model", pa.string()),
            ("request", pa.binary()),  # ChatRequest.packed(): LZ4 of the canonical body
            ("text", pa.string()),
            ("finish_reason", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("latency", pa.float64()),
            ("batch", pa.bool_()),
            ("created_at", pa.float64()),
            # of prompt_tokens, read from the server's prefix cache; parts written before glan
            # kept it have no such column (read as 0)
            pa.field("cached_tokens", pa.int64(), nullable=True),
        ]
    )


@cache
def failure_schema() -> pa.Schema:
    pa = _pa()
    return pa.schema(
        [
            ("id", pa.string()),
            ("kind", pa.string()),
            ("root", pa.string()),
            ("error", pa.string()),
            ("failed_at", pa.float64()),
        ]
    )


def node_key(node_id: str) -> int:
    """An id as a uint64 (its first 64 bits), so millions of done ids fit in a numpy array."""
    return int(node_id[:16], 16)


@dataclass(frozen=True)
class RunLocation:
    """A run directory on some filesystem: a local path or a URI."""

    fs: pafs.FileSystem
    root: str  # the directory's path inside ``fs``
    uri: str  # as the user gave it

    @classmethod
    def of(cls, out: str) -> RunLocation:
        from pyarrow import fs

        if "://" not in out:
            return cls(fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(out)), out)
        try:
            filesystem, root = fs.FileSystem.from_uri(out)
        except (ValueError, OSError) as error:
            raise RunFilesError(f"cannot open {out}: {error}") from None
        return cls(filesystem, root.rstrip("/") or "/", out)

    @property
    def is_local(self) -> bool:
        from pyarrow import fs

        return isinstance(self.fs, fs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def shown(self, *parts: str) -> str:
        """A path as a user reads it: no credentials or options of the URI."""
        if self.is_local:
            return self.path(*parts)
        return f"{self.uri.split('://', 1)[0]}://{self.path(*parts)}"

    def parts(self, directory: str) -> list[str]:
        """The finished parts of ``directory`` (rows, calls or failed), sorted by name."""
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(
                fs.FileSelector(self.path(directory), allow_not_found=True)
            )
        except OSError as error:
            raise RunFilesError(f"cannot list {self.path(directory)}: {error}") from None
        return sorted(
            info.path
            for info in infos
            if info.type == fs.FileType.File and info.path.endswith(".parquet")
        )

    def read(
        self, directory: str, columns: Sequence[str] | None = None, *, set_aside: bool = False
    ) -> Iterator[pa.RecordBatch]:
        """Every record batch of a directory's parts, ``columns`` only. A part that cannot be
        read is skipped: one being written by a running job, or one cut short when a job was
        killed. ``set_aside`` (for the engine, when it starts and no job writes) renames it
        ``*.broken`` too: what it held is made again, from the stored replies."""
        for path in self.parts(directory):
            yield from self.read_part(path, columns, set_aside=set_aside)

    def read_part(
        self,
        path: str,
        columns: Sequence[str] | None = None,
        *,
        set_aside: bool = False,
        strict: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """The record batches of one part (a path ``parts`` gave), as ``read`` reads them;
        ``strict`` raises ``BrokenPart`` where ``read`` would skip the part."""
        import pyarrow.parquet as pq

        try:
            with self.fs.open_input_file(path) as file:
                parquet = pq.ParquetFile(file)
                yield from parquet.iter_batches(columns=list(columns) if columns else None)
        except (OSError, ValueError) as error:
            if "Parquet" not in str(error) and "parquet" not in str(error):
                raise RunFilesError(f"cannot read {path}: {error}") from None
            if strict:
                raise BrokenPart(f"{path} is not a whole Parquet file: {error}") from None
            if set_aside:
                self.fs.move(path, path + ".broken")


class StateDir:
    """Where the driver keeps glan.db: in OUT itself when OUT is a local or shared path; else in
    a local directory (``$GLAN_STATE`` or ~/.cache/glan/runs/ID), fetched from OUT/glan.db when
    missing and copied back up when a run stops."""

    def __init__(self, out: str) -> None:
        from pyarrow import fs as pafs

        self.location = RunLocation.of(out)
        if self.location.is_local:
            self.path = Path(self.location.root)
            return
        base = Path(os.environ.get("GLAN_STATE", "~/.cache/glan/runs")).expanduser()
        self.path = base / stable_id(out)
        local = self.path / DB_NAME
        if not local.exists() and self._remote_db().type == pafs.FileType.File:
            self.path.mkdir(parents=True, exist_ok=True)
            self._copy(self.location.fs, self.location.path(DB_NAME), pafs.LocalFileSystem(), local)

    def upload(self) -> None:
        from pyarrow import fs as pafs

        if not self.location.is_local:
            local = str(self.path / DB_NAME)
            self._copy(pafs.LocalFileSystem(), local, self.location.fs, self.location.path(DB_NAME))

    def _remote_db(self) -> Any:
        return self.location.fs.get_file_info(self.location.path(DB_NAME))

    @staticmethod
    def _copy(source: Any, path: str, target: Any, to: str | Path) -> None:
        from pyarrow import fs as pafs

        try:
            pafs.copy_files(path, str(to), source_filesystem=source, destination_filesystem=target)
        except OSError as error:
            raise RunFilesError(f"cannot copy {path} to {to}: {error}") from None


class RunFilesError(Exception):
    """A run directory's Parquet parts cannot be read or written; the message says which."""


class BrokenPart(RunFilesError):
    """A part that cannot be read as Parquet (cut short, or still being written)."""


class PartWriter:
    """Rows gathered in memory and written as a new part each ``flush``.

    A part is written under a temporary name and renamed into place on a local or shared
    filesystem, so a reader never sees half a file; on an object store a PUT is already atomic.
    """

    def __init__(self, location: RunLocation, directory: str, schema: pa.Schema) -> None:
        self.location = location
        self.directory = directory
        self.schema = schema
        self.prefix = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"
        self._numbers = itertools.count()
        self._rows: list[dict[str, Any]] = []
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self) -> None:
        if not self._rows:
            return
        import pyarrow.parquet as pq

        rows, self._rows = self._rows, []
        table = _pa().Table.from_pylist(rows, schema=self.schema)
        name = self.location.path(self.directory, f"{self.prefix}-{next(self._numbers):06d}")
        final = name + ".parquet"
        target = name + ".tmp" if self.location.is_local else final
        try:
            self.location.fs.create_dir(self.location.path(self.directory), recursive=True)
            pq.write_table(table, target, filesystem=self.location.fs, compression="zstd")
            if target != final:
                self.location.fs.move(target, final)
        except OSError as error:
            self._rows = rows + self._rows  # kept: the next flush tries again
            raise RunFilesError(f"cannot write {final}: {error}") from None
        self.written += len(rows)
