"""A local run: every item, reply and row in glan.db; instructions.jsonl mirrors the rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from glan.run.jsonl import OUTPUT_NAME
from glan.run.reader import OutputReader
from glan.run.store import Store


class LocalRun:
    """Rows are the store's output rows, less those a longer conversation superseded (see
    ``Store.supersede``): every question has one row, its longest conversation."""

    def __init__(self, store: Store, where: str) -> None:
        self.store = store
        self.where = where
        self.dataset = str(Path(where) / OUTPUT_NAME)

    def counts(self) -> dict[str, dict[str, int]]:
        return self.store.counts()

    def usage(self) -> list[tuple[str, str, bool, int, int, int, int]]:
        return self.store.usage()

    def errors(self, limit: int = 10) -> list[tuple[str, str, str]]:
        return self.store.errors(limit)

    def last_seq(self) -> int:
        return self.store.last_out_seq()

    @cached_property
    def _superseded(self) -> bytearray | None:
        return self.store.superseded()

    def _current(self, seq: int) -> bool:
        gone = self._superseded
        return gone is None or seq >= len(gone) or not gone[seq]

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self._superseded is None:
            return self.store.outputs()
        return ((seq, row) for seq, row in self.store.outputs() if self._current(seq))

    def questions_by_id(self, through: int) -> Iterator[tuple[int, str, str]]:
        if self._superseded is None:
            return self.store.questions_by_id(through)
        return (entry for entry in self.store.questions_by_id(through) if self._current(entry[0]))

    def question(self, seq: int) -> str:
        return self.store.question("out_seq", seq)

    def row_id(self, seq: int) -> str | None:
        return self.store.output_id(seq)

    def reader(self) -> OutputReader:
        return OutputReader(self.store.path)

    def ids_at(self, seqs: Sequence[int]) -> dict[int, str]:
        return self.store.outputs_at(seqs)

    def questions_at(self, seqs: Sequence[int]) -> dict[int, str]:
        return self.store.outputs_at(seqs, questions=True)

    def question_of(self, row_id: str) -> str:
        return self.store.question("id", row_id)

    def close(self) -> None:
        self.store.close()
