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


class OutputWriteError(Exception):
    """instructions.jsonl could not be written (most often: the disk is full). Nothing is lost:
    the store holds every row, and the next run brings the file level with it."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(f"writing {path} failed: {cause.strerror or cause}")
        self.path = path
        self.cause = cause


class JsonlOutput:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.failure: OSError | None = None  # a write failed: the file is left as it is

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
        """A row already serialised (as the store keeps it). A write that fails is remembered,
        not raised (this runs after a commit, which must not fail for it): ``flush`` raises it."""
        assert self._file is not None
        if self.failure is not None:
            return
        try:
            self._file.write(line + "\n")
        except OSError as error:
            self.failure = error

    def flush(self) -> None:
        """OutputWriteError when a write has failed."""
        if self._file is not None and self.failure is None:
            try:
                self._file.flush()
            except OSError as error:
                self.failure = error
        if self.failure is not None:
            raise OutputWriteError(self.path, self.failure)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:  # what the buffer held: the next run writes it again
                self.failure = self.failure or error
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
