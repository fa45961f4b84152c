"""The run directory: one interface over what a run holds, whichever engine wrote it.

A local run keeps everything in ``glan.db`` (and mirrors its rows to instructions.jsonl); a Ray
run keeps the narrow stages in ``glan.db`` and its pairs, replies and failures in Parquet parts,
on a local path or in an object store. ``open_run`` gives either as a ``Run``; status, curate,
export and report use only this face and never ask which kind they hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from glan.run.parts import RunFilesError, StateDir
from glan.run.reader import OutputReader
from glan.run.store import DB_NAME, Store, StoreError

ENGINE_META = "engine"  # glan.db meta key: "ray" for a Ray run

# (stage, model, batch, calls, tokens in, tokens out, cached tokens in)
Usage = list[tuple[str, str, bool, int, int, int, int]]


class Run(Protocol):
    """A run directory, read (and, for curation, annotated) through one face.

    Rows are numbered by ``seq``, their place in the output, from 1: new pairs only ever get
    higher numbers, so "the rows up to ``seq`` N" is a stable snapshot (curation records one).
    """

    store: Store  # glan.db: items of the narrow stages, meta, curation records
    where: str  # the run as the user named it
    dataset: str  # where its pairs are, for a person to read

    def counts(self) -> dict[str, dict[str, int]]:
        """{kind: {status: count}} of every item."""
        ...

    def usage(self) -> Usage:
        """Every paid-for reply, grouped by stage, model and batch."""
        ...

    def errors(self, limit: int = 10) -> list[tuple[str, str, str]]:
        """(kind, id, error) of failed items, most recent first."""
        ...

    def last_seq(self) -> int: ...

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(seq, row) of every pair once, in output order; streams."""
        ...

    def questions_by_id(self, through: int) -> Iterator[tuple[int, str, str]]:
        """(seq, id, question) of the rows up to ``through``, in id order (curation's order)."""
        ...

    def question(self, seq: int) -> str:
        """The question of row ``seq`` ("" when there is none)."""
        ...

    def row_id(self, seq: int) -> str | None: ...

    def reader(self) -> OutputReader | None:
        """Rows by number for another process to read on its own (``rows(first, last)``), or
        None when only ``rows`` reads them."""
        ...

    def ids_at(self, seqs: Sequence[int]) -> dict[int, str]:
        """{seq: id} of these rows (those that exist), looked up together."""
        ...

    def questions_at(self, seqs: Sequence[int]) -> dict[int, str]:
        """{seq: question} of these rows (those that exist; "" for a row without one)."""
        ...

    def question_of(self, row_id: str) -> str:
        """The question of the row with this id ("" when there is none)."""
        ...

    def close(self) -> None:
        """Commit, and put glan.db back where the run lives (an object store's copy)."""
        ...


def is_run(where: str | Path) -> bool:
    """Whether ``where`` holds a glan run (a glan.db here, or in an object store's state)."""
    try:
        return (StateDir(str(where)).path / DB_NAME).is_file()
    except RunFilesError:
        return False


def open_run(where: str | Path, *, write: bool = False) -> Run:
    """The run at ``where`` (a directory or an object-store URI) as a ``Run``.

    ``write`` is for commands that record something (curation); readers open it as it is.
    """
    state = StateDir(str(where))
    if not (state.path / DB_NAME).is_file():
        raise StoreError(f"{where} is not a glan run directory (no {DB_NAME} in it)")
    store = Store.open(state.path, readonly=not write)
    try:
        if store.get_meta(ENGINE_META) == "ray":
            from glan.run.ray_run import RayRun

            return RayRun(store, state, write=write)
        from glan.run.local import LocalRun

        return LocalRun(store, str(where))
    except BaseException:
        store.close()
        raise


__all__ = ["ENGINE_META", "Run", "Usage", "is_run", "open_run"]
