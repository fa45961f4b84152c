"""Where curation keeps its results: two tables of its own in the run's glan.db.

``curation_runs`` has one row per ``glan curate``: its settings, when it started and finished, how
far into the output it looked (``through_seq``) and its counts. ``curation_removed`` has one row per
removed pair of a run: why (``reason``) and what it matched (JSON). Nothing else is written: the
generated rows (``nodes``), the paid-for replies (``calls``) and instructions.jsonl stay as they
are.

The latest *finished* run is the curation in force. A new run writes its removals under its own id
in short transactions (a ``glan generate`` writing to the same store meanwhile waits milliseconds,
not minutes); when it finishes it becomes the one in force and the removals of older runs are
deleted. A run that was interrupted never finished, so the previous curation stays in force until
the next run clears it away.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from glan.run.store import Store

if TYPE_CHECKING:
    from glan.run import Run

COMPONENT = "curation"
MIGRATIONS: list[str] = [
    """
    CREATE TABLE curation_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        finished_at REAL,
        config TEXT NOT NULL,
        through_seq INTEGER NOT NULL,
        rows_in INTEGER,
        rows_kept INTEGER,
        counts TEXT,
        notes TEXT
    );
    CREATE TABLE curation_removed (
        run_id INTEGER NOT NULL,
        row_id TEXT NOT NULL,
        out_seq INTEGER NOT NULL,
        reason TEXT NOT NULL,
        matched TEXT,
        PRIMARY KEY (run_id, row_id)
    );
    CREATE INDEX curation_removed_seq ON curation_removed (run_id, out_seq);
    CREATE INDEX curation_removed_reason ON curation_removed (run_id, reason)
    """,
]
_BATCH = 2000  # removals per transaction


@dataclass(frozen=True)
class CurationRun:
    id: int
    started_at: float
    finished_at: float
    config: dict[str, Any]
    through_seq: int  # rows up to this out_seq were curated; later ones arrived afterwards
    rows_in: int
    rows_kept: int
    counts: dict[str, int]  # removals by reason
    notes: dict[str, Any]  # what the run loaded (benchmarks, ...)

    @property
    def removed(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Removal:
    row_id: str
    out_seq: int
    reason: str
    matched: dict[str, Any]


class CurationLog:
    """Reads and writes the curation tables of one store."""

    def __init__(self, store: Store) -> None:
        store.migrate(COMPONENT, MIGRATIONS)
        self.db = store.db
        self._pending: list[tuple[int, str, int, str, str]] = []

    @classmethod
    def existing(cls, store: Store) -> CurationLog | None:
        """The log of a store that has been curated; None (and nothing written) otherwise."""
        row = store.db.execute(
            "SELECT 1 FROM schema_versions WHERE component = ?", (COMPONENT,)
        ).fetchone()
        return cls(store) if row else None

    # -- writing --------------------------------------------------------------------------------

    def start(self, config: dict[str, Any], through_seq: int) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO curation_runs (started_at, config, through_seq) VALUES (?, ?, ?)",
                (time.time(), json.dumps(config), through_seq),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def remove(self, run_id: int, row_id: str, out_seq: int, reason: str, matched: Any) -> None:
        self._pending.append(
            (run_id, row_id, out_seq, reason, json.dumps(matched, ensure_ascii=False))
        )
        if len(self._pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO curation_removed (run_id, row_id, out_seq, reason, matched)"
                " VALUES (?, ?, ?, ?, ?)",
                self._pending,
            )
        self._pending = []

    def finish(
        self,
        run_id: int,
        *,
        rows_in: int,
        rows_kept: int,
        counts: dict[str, int],
        notes: dict[str, Any],
    ) -> None:
        """Put this run in force; the removals of every other run go (history stays)."""
        self.flush()
        with self._transaction():
            self.db.execute(
                "UPDATE curation_runs SET finished_at = ?, rows_in = ?, rows_kept = ?, counts = ?,"
                " notes = ? WHERE id = ?",
                (time.time(), rows_in, rows_kept, json.dumps(counts), json.dumps(notes), run_id),
            )
            self.db.execute("DELETE FROM curation_removed WHERE run_id != ?", (run_id,))
            self.db.execute(
                "DELETE FROM curation_runs WHERE finished_at IS NULL AND id != ?", (run_id,)
            )

    def _transaction(self) -> Any:
        return _Transaction(self.db)

    # -- reading --------------------------------------------------------------------------------

    def latest(self) -> CurationRun | None:
        """The curation in force: the latest run that finished."""
        row = self.db.execute(
            "SELECT id, started_at, finished_at, config, through_seq, rows_in, rows_kept, counts,"
            " notes FROM curation_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        run_id, started, finished, config, through, rows_in, kept, counts, notes = row
        return CurationRun(
            id=run_id,
            started_at=started,
            finished_at=finished,
            config=json.loads(config),
            through_seq=through,
            rows_in=rows_in,
            rows_kept=kept,
            counts=json.loads(counts),
            notes=json.loads(notes or "{}"),
        )

    def removed_seqs(self, run_id: int) -> Iterator[int]:
        """The out_seq of every removed pair, ascending (to skip them in a stream of rows)."""
        for (seq,) in self.db.execute(
            "SELECT out_seq FROM curation_removed WHERE run_id = ? ORDER BY out_seq", (run_id,)
        ):
            yield seq

    def removals(
        self, run_id: int, reason: str | None = None, limit: int | None = None
    ) -> list[Removal]:
        sql = "SELECT row_id, out_seq, reason, matched FROM curation_removed WHERE run_id = ?"
        params: list[Any] = [run_id]
        if reason is not None:
            sql += " AND reason = ?"
            params.append(reason)
        sql += " ORDER BY out_seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            Removal(row_id, seq, why, json.loads(matched) if matched else {})
            for row_id, seq, why, matched in self.db.execute(sql, params)
        ]

    def matched_benchmarks(self, run_id: int) -> dict[str, int]:
        """Decontamination removals per benchmark."""
        return dict(
            self.db.execute(
                "SELECT json_extract(matched, '$.benchmark'), COUNT(*) FROM curation_removed"
                " WHERE run_id = ? AND reason = 'decontaminated' GROUP BY 1 ORDER BY 2 DESC",
                (run_id,),
            ).fetchall()
        )


class CuratedRows:
    """The dataset as curated: every row of the run up to the curation's ``through_seq``, less
    the pairs it removed, in output order; every row when there is no curation (or
    ``use_curation=False``). Streams: removed pairs are skipped by merging two sorted streams."""

    def __init__(self, run: Run, *, use_curation: bool = True) -> None:
        self.run = run
        log = CurationLog.existing(run.store) if use_curation else None
        self.log = log
        self.curation: CurationRun | None = log.latest() if log is not None else None
        last = run.last_seq()
        self.through = self.curation.through_seq if self.curation else last
        self.uncurated = last - self.through

    @property
    def removed(self) -> int:
        return self.curation.removed if self.curation else 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        removed = self._removed_seqs()
        skip = next(removed, None)
        for seq, row in self.run.rows():
            if seq > self.through:
                return
            while skip is not None and skip < seq:
                skip = next(removed, None)
            if skip == seq:
                continue
            yield row

    def _removed_seqs(self) -> Iterator[int]:
        if self.curation is None or self.log is None:
            return iter(())
        return self.log.removed_seqs(self.curation.id)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK) on a connection in autocommit mode."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
