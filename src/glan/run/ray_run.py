"""A Ray run: the narrow stages in glan.db, the pairs, replies and failures in Parquet parts.

Curation and reports need what Parquet parts do not give cheaply: rows numbered in a stable
order, questions in id order, a question by number. ``RowIndex`` keeps exactly that (seq, id,
part, question; never the answers) in a SQLite file beside glan.db, brought level with the parts
each time the run is opened: a part is indexed once, its new ids numbered after every earlier
one, so numbers never change and new pairs always come last.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glan.run import ray_parts
from glan.run.parts import ROWS, BrokenPart, RunFilesError, RunLocation, StateDir
from glan.run.store import Store, StoreError

if TYPE_CHECKING:
    import numpy as np

INDEX_NAME = "rows-index.db"
_LOOKUP_BATCH = 5000  # rows looked up by number in one query
_SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (ordinal INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS rows (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    part INTEGER NOT NULL,
    question TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rows_part ON rows (part);
"""


class RayRun:
    def __init__(self, store: Store, state: StateDir, *, write: bool = False) -> None:
        self.store = store
        self.state = state
        self.location: RunLocation = state.location
        self.where = state.location.uri
        self.dataset = state.location.shown(ROWS)
        self._write = write
        self.index = RowIndex(state.path)
        self.index.sync(self.location)

    @cached_property
    def _done(self) -> np.ndarray:
        return ray_parts.done_keys(self.location)

    @cached_property
    def _failed(self) -> dict[str, ray_parts.Failure]:
        return ray_parts.failures(self.location, self._done)

    def counts(self) -> dict[str, dict[str, int]]:
        counts = self.store.counts()
        counts.update(ray_parts.wide_counts(self.store, self._done, self._failed))
        return counts

    def usage(self) -> list[tuple[str, str, bool, int, int, int, int]]:
        return self.store.usage() + ray_parts.wide_usage(self.location)

    def errors(self, limit: int = 10) -> list[tuple[str, str, str]]:
        return ray_parts.errors(self.store, self._failed, limit)

    def last_seq(self) -> int:
        return self.index.last_seq()

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for ordinal, name in self.index.parts():
            seqs = self.index.seqs_of_part(ordinal)
            for batch in self.location.read_part(self.location.path(ROWS, name)):
                for row in batch.to_pylist():
                    seq = seqs.pop(row["id"], None)  # None: a repeat, written earlier
                    if seq is not None:
                        yield seq, row
            if seqs:
                raise RunFilesError(
                    f"{self.location.shown(ROWS, name)} no longer holds the rows it held;"
                    f" remove {self.index.path} and run the command again"
                )

    def questions_by_id(self, through: int) -> Iterator[tuple[int, str, str]]:
        return self.index.questions_by_id(through)

    def question(self, seq: int) -> str:
        return self.index.question("seq", seq)

    def row_id(self, seq: int) -> str | None:
        return self.index.row_id(seq)

    def reader(self) -> None:
        return None  # rows are found part by part, through the index: rows() reads them

    def ids_at(self, seqs: Sequence[int]) -> dict[int, str]:
        return self.index.at(seqs, "id")

    def questions_at(self, seqs: Sequence[int]) -> dict[int, str]:
        return self.index.at(seqs, "question")

    def question_of(self, row_id: str) -> str:
        return self.index.question("id", row_id)

    def close(self) -> None:
        self.index.close()
        if self._write:
            self.store.checkpoint()
        self.store.close()
        if self._write:
            self.state.upload()


class RowIndex:
    """(seq, id, part, question) of every row of a Ray run, in a SQLite file of its own."""

    def __init__(self, directory: Path) -> None:
        try:
            self.db = self._connect(directory / INDEX_NAME)
        except (sqlite3.Error, OSError):  # a read-only run: index in a scratch directory
            self.db = self._connect(Path(tempfile.mkdtemp(prefix="glan-index-")) / INDEX_NAME)
        self.path = Path(self.db.execute("PRAGMA database_list").fetchone()[2])

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.executescript(_SCHEMA)
        return db

    def sync(self, location: RunLocation) -> None:
        """Index the readable parts of rows/ that are not indexed yet, in name order."""
        import pyarrow.compute as pc

        known = {name for (name,) in self.db.execute("SELECT name FROM parts")}
        for path in location.parts(ROWS):
            name = path.rsplit("/", 1)[-1]
            if name in known:
                continue
            try:
                self.db.execute("BEGIN")
                ordinal = self.db.execute("INSERT INTO parts (name) VALUES (?)", (name,)).lastrowid
                for batch in location.read_part(path, ["id", "messages"], strict=True):
                    first = pc.list_element(batch.column("messages"), 0)
                    questions = pc.fill_null(pc.struct_field(first, "content"), "")
                    self.db.executemany(
                        "INSERT OR IGNORE INTO rows (id, part, question) VALUES (?, ?, ?)",
                        zip(
                            batch.column("id").to_pylist(),
                            [ordinal] * batch.num_rows,
                            questions.to_pylist(),
                            strict=True,
                        ),
                    )
                self.db.execute("COMMIT")
            except BrokenPart:  # left for a later run, when it may be whole
                self.db.execute("ROLLBACK")
            except sqlite3.Error as error:
                self.db.execute("ROLLBACK")
                raise StoreError(f"indexing {path} in {self.path} failed: {error}") from None

    def parts(self) -> list[tuple[int, str]]:
        return self.db.execute("SELECT ordinal, name FROM parts ORDER BY ordinal").fetchall()

    def seqs_of_part(self, ordinal: int) -> dict[str, int]:
        return dict(self.db.execute("SELECT id, seq FROM rows WHERE part = ?", (ordinal,)))

    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM rows").fetchone()[0]

    def questions_by_id(self, through: int) -> Iterator[tuple[int, str, str]]:
        yield from self.db.execute(
            "SELECT seq, id, question FROM rows WHERE seq <= ? ORDER BY id", (through,)
        )

    def question(self, column: str, value: Any) -> str:
        assert column in ("id", "seq")
        row = self.db.execute(f"SELECT question FROM rows WHERE {column} = ?", (value,)).fetchone()
        return row[0] if row else ""

    def row_id(self, seq: int) -> str | None:
        row = self.db.execute("SELECT id FROM rows WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def at(self, seqs: Sequence[int], column: str) -> dict[int, str]:
        """{seq: id or question} of these rows, in one query per few thousand."""
        assert column in ("id", "question")
        found: dict[int, str] = {}
        for start in range(0, len(seqs), _LOOKUP_BATCH):
            wanted = json.dumps(list(seqs[start : start + _LOOKUP_BATCH]))
            found.update(
                self.db.execute(
                    f"SELECT seq, {column} FROM rows WHERE seq IN (SELECT value FROM json_each(?))",
                    (wanted,),
                )
            )
        return found

    def close(self) -> None:
        self.db.close()
