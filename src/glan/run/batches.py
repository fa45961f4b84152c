"""The batch client's records in the run's glan.db: three tables of their own.

``batches`` has one row per batch this run wrote (its provider ids and last known status),
``batch_requests`` which request keys went into which batch (and for whom), ``batch_results``
the replies of collected batches until the engine has saved them as calls.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import orjson

from glan.llm.batch.records import Collected, Origin, Unconfirmed
from glan.llm.types import ChatResponse
from glan.run.store import Store, StoreError

COMPONENT = "batches"
MIGRATIONS: list[str] = [
    """
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        status TEXT NOT NULL,  -- preparing, uploaded, the provider's, or abandoned (never created)
        input_file_id TEXT,
        provider_id TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        requests INTEGER NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        collected INTEGER NOT NULL DEFAULT 0,  -- results taken: nothing left to poll
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX batches_open ON batches (collected);
    CREATE TABLE batch_requests (
        key TEXT NOT NULL,
        batch INTEGER NOT NULL REFERENCES batches (id),
        stage TEXT,
        node_id TEXT,
        status TEXT NOT NULL DEFAULT 'waiting',  -- waiting, done, failed, resubmit
        error TEXT,
        PRIMARY KEY (key, batch)
    );
    CREATE INDEX batch_requests_batch ON batch_requests (batch);
    CREATE TABLE batch_results (
        key TEXT PRIMARY KEY,
        batch INTEGER NOT NULL,
        response TEXT NOT NULL
    );
    """,
]
# One lookup per kept result, not a scan of calls.
_FORGET_SAVED = (
    "DELETE FROM batch_results"
    " WHERE EXISTS (SELECT 1 FROM calls WHERE calls.key = batch_results.key)"
)


class SqliteBatchRecords:
    """``glan.llm.batch.records.BatchRecords`` on a run's store."""

    errors = (StoreError,)

    def __init__(self, store: Store) -> None:
        store.migrate(COMPONENT, MIGRATIONS)
        self.store = store
        self.db = store.db

    # -- asked --------------------------------------------------------------------------------

    def unconfirmed(self) -> list[Unconfirmed]:
        rows = self.db.execute(
            "SELECT id, input_file_id FROM batches WHERE collected = 0 AND provider_id IS NULL"
        )
        return [Unconfirmed(batch, file_id) for batch, file_id in rows]

    def open_batch_of(self, key: str) -> tuple[int, str] | None:
        row = self.db.execute(
            "SELECT b.id, b.provider_id FROM batch_requests r JOIN batches b ON b.id = r.batch"
            " WHERE r.key = ? AND b.collected = 0 AND b.provider_id IS NOT NULL",
            (key,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def kept_result(self, key: str) -> ChatResponse | None:
        row = self.db.execute("SELECT response FROM batch_results WHERE key = ?", (key,)).fetchone()
        return None if row is None else ChatResponse(**orjson.loads(row[0]), batch=True)

    def keys(self, batch: int) -> list[str]:
        rows = self.db.execute("SELECT key FROM batch_requests WHERE batch = ?", (batch,))
        return [key for (key,) in rows]

    def submitted_at(self, batch: int) -> float:
        (created,) = self.db.execute(
            "SELECT created_at FROM batches WHERE id = ?", (batch,)
        ).fetchone()
        return float(created)

    # -- told ---------------------------------------------------------------------------------

    def new_batch(self, model: str, requests: list[tuple[str, Origin | None]]) -> int:
        now = time.time()
        with self._tx() as tx:
            batch = tx.execute(
                "INSERT INTO batches (model, status, requests, created_at, updated_at)"
                " VALUES (?, 'preparing', ?, ?, ?)",
                (model, len(requests), now, now),
            ).lastrowid
            assert batch is not None
            tx.executemany(
                "INSERT INTO batch_requests (key, batch, stage, node_id) VALUES (?, ?, ?, ?)",
                ((key, batch, *(origin or (None, None))) for key, origin in requests),
            )
        return batch

    def uploaded(self, batch: int, file_id: str) -> None:
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET status = 'uploaded', input_file_id = ?, updated_at = ?"
                " WHERE id = ?",
                (file_id, time.time(), batch),
            )

    def created(self, batch: int, provider_id: str, status: str) -> None:
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET provider_id = ?, status = ?, updated_at = ? WHERE id = ?",
                (provider_id, status, time.time(), batch),
            )

    def abandon(self, batch: int) -> None:
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET status = 'abandoned', collected = 1, updated_at = ?"
                " WHERE id = ?",
                (time.time(), batch),
            )
            tx.execute("UPDATE batch_requests SET status = 'resubmit' WHERE batch = ?", (batch,))

    def progress(self, batch: int, status: str, completed: int, failed: int) -> None:
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET status = ?, completed = ?, failed = ?, updated_at = ?"
                " WHERE id = ?",
                (status, completed, failed, time.time(), batch),
            )

    def collected(self, batch: int, results: Collected) -> None:
        with self._tx() as tx:
            tx.execute(_FORGET_SAVED)
            tx.executemany(
                "INSERT OR REPLACE INTO batch_results (key, batch, response) VALUES (?, ?, ?)",
                ((key, batch, _dumps(response)) for key, response in results.done),
            )
            tx.executemany(
                "UPDATE batch_requests SET status = ?, error = ? WHERE key = ? AND batch = ?",
                [("done", None, key, batch) for key, _ in results.done]
                + [("failed", error, key, batch) for key, error in results.failed]
                + [("resubmit", error, key, batch) for key, error in results.again.items()],
            )
            tx.execute(
                "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?,"
                " completed = ?, failed = ?, error = ?, collected = 1, updated_at = ? WHERE id = ?",
                (
                    results.status,
                    results.output_file_id,
                    results.error_file_id,
                    len(results.done),
                    len(results.failed) + len(results.again),
                    results.error,
                    time.time(),
                    batch,
                ),
            )

    def forget_saved(self) -> None:
        with self._tx() as tx:
            tx.execute(_FORGET_SAVED)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Writes that are durable when the block ends (in the engine's open transaction, if one
        is open, which is then committed)."""
        db = self.db
        own = not db.in_transaction
        try:
            if own:
                db.execute("BEGIN")
            yield db
            if own:
                db.execute("COMMIT")
        except sqlite3.Error as error:
            if own and db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(
                f"writing batch records to {self.store.path} failed: {error}"
            ) from None
        if not own:
            self.store.commit()


def _dumps(response: ChatResponse) -> str:
    stored: dict[str, Any] = {
        "text": response.text,
        "finish_reason": response.finish_reason,
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "latency": response.latency,
        "model": response.model,
        "cached_tokens": response.cached_tokens,
    }
    return orjson.dumps(stored).decode()
