"""Record writers for an export: JSONL or Parquet files, sharded with the names the Hugging Face
Hub recognises (``train-00000-of-00004.parquet``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from glan.curation.errors import require

_BATCH = 5000  # rows per Parquet write: ~15 MB of text in memory at a time


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
