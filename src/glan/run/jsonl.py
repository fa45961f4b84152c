"""instructions.jsonl: the dataset, one line per finished answer, in the store's output order.

The store is the source of truth; the file is brought level with it when a run starts (a line cut
by a crash is dropped, missing rows are appended) and grows as answers are committed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import orjson

from glan.run.store import Store

OUTPUT_NAME = "instructions.jsonl"


class JsonlOutput:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def open(self, store: Store) -> int:
        """Bring the file level with the store; returns how many rows were appended."""
        last_seq = self._last_seq(store)
        if last_seq is None:  # no file, or one this run did not write: rewrite from the store
            self.path.write_text("", encoding="utf-8")
            last_seq = 0
        self._file = self.path.open("a", encoding="utf-8")
        added = 0
        for _, row in store.outputs(after_seq=last_seq):
            self.write(row)
            added += 1
        self.flush()
        return added

    def _last_seq(self, store: Store) -> int | None:
        if not self.path.exists():
            return None
        with self.path.open("rb+") as file:
            size = file.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            tail = _tail(file, size)
            if not tail.endswith(b"\n"):  # a line cut short by a crash
                cut = tail.rfind(b"\n")
                file.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
                tail = tail[: cut + 1] if cut >= 0 else b""
            lines = tail.splitlines()
            if not lines:
                return 0
            try:
                last_id = json.loads(lines[-1])["id"]
            except (ValueError, KeyError, TypeError):
                return None
        return store.out_seq_of(last_id)

    def write(self, row: Any) -> None:
        self.write_json(orjson.dumps(row).decode())

    def write_json(self, line: str) -> None:
        """A row already serialised (as the store keeps it)."""
        assert self._file is not None
        self._file.write(line + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _tail(file: IO[bytes], size: int, block: int = 1 << 20) -> bytes:
    """The end of the file, enough to hold its last complete line."""
    start = max(0, size - block)
    while True:
        file.seek(start)
        data = file.read()
        if start == 0 or data.count(b"\n") >= 2:
            return data
        start = max(0, start - block)
