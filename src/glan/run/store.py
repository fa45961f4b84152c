"""The run directory's SQLite store: every item by id, every paid-for reply by request hash.

One file (WAL) per run. Writes from the engine go into an open transaction and are committed in
groups (``await store.durable()``), because a commit per reply would cap throughput; nothing that
depends on a reply is done before the reply's commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from glan.run.calls import _RESCUE_CALL, Calls
from glan.run.nodes import Nodes
from glan.run.rows import Rows
from glan.run.space import RESERVE_NAME, is_full

DB_NAME = "glan.db"
TURNS_META = "turns"  # meta: the run's --turns (absent: 1)
# meta: replies were stored after their items' transaction failed (``Store.rescue``), so an item
# created by a later run may already have its replies stored
RESCUED_META = "rescued_calls"

# Numbered migrations: index i brings user_version i to i + 1. Never edit one that has shipped.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        parent_id TEXT,
        root TEXT NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        data TEXT NOT NULL,
        result TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        out_seq INTEGER,
        updated_at REAL NOT NULL
    );
    CREATE INDEX nodes_queue ON nodes (kind, status);
    CREATE INDEX nodes_parent ON nodes (parent_id);
    CREATE UNIQUE INDEX nodes_out ON nodes (out_seq) WHERE out_seq IS NOT NULL;
    CREATE TABLE calls (
        key TEXT PRIMARY KEY,
        node_id TEXT,
        stage TEXT,
        model TEXT NOT NULL,
        request BLOB NOT NULL,
        text TEXT NOT NULL,
        finish_reason TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency REAL NOT NULL,
        batch INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX calls_stage ON calls (stage);
    CREATE TABLE invocations (
        started_at REAL NOT NULL,
        config TEXT NOT NULL
    );
    CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
    """,
    # 2: prompt tokens the server read from its prefix cache (0: none, or not reported)
    """
    ALTER TABLE calls ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    """,
]


class StoreError(Exception):
    """The run directory cannot be used (not writable, disk full, newer schema)."""


class StoreWriteError(StoreError):
    """A write to glan.db failed mid-run (most often: the disk is full). The store stops
    writing; the replies of the failed transaction wait in ``Store.unsaved`` for ``rescue``."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


class Store(Calls, Nodes, Rows):
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly:
            self.db = _open_readonly(path)
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            # Ids are hashes, so inserts land on random index pages: keep many pages in memory.
            self.db.execute("PRAGMA cache_size=-65536")
            self._migrate()
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open the run store {path}: {error}") from None
        self._in_tx = False
        self._commit_scheduled = False
        self._waiters: list[asyncio.Future[None]] = []
        self._after_commit: list[Any] = []
        self.failure: StoreWriteError | None = None  # a write failed: no more are made
        self._tx_calls: list[tuple[Any, ...]] = []  # calls written in the open transaction
        self.unsaved: list[tuple[Any, ...]] = []  # calls received that a failure kept out
        self._reserve: Path | None = None
        self._next_out_seq = (
            self.db.execute("SELECT COALESCE(MAX(out_seq), 0) FROM nodes").fetchone()[0] + 1
        )

    @classmethod
    def open(cls, run_dir: str | Path, *, readonly: bool = False) -> Store:
        """The store of a run directory; ``readonly`` for commands that only read (status,
        export, report): they work on read-only media too."""
        return cls(Path(run_dir) / DB_NAME, readonly=readonly)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} was written by a newer glan (schema {version}); upgrade glan"
            )
        if self.readonly and version < len(MIGRATIONS):
            raise StoreError(_STALE_READONLY.format(path=self.path, what="schema"))
        for number in range(version, len(MIGRATIONS)):
            self.db.executescript(
                f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;"
            )

    def migrate(self, component: str, migrations: list[str]) -> None:
        """Bring a component's own tables (curation, batches, ...) up to date.

        Each component numbers its migrations independently, like the core's ``MIGRATIONS``.
        """
        self.commit()
        row = self.db.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
        version = row[0] if row else 0
        if version > len(migrations):
            raise StoreError(
                f"{self.path} has {component} schema {version}, newer than this glan; upgrade glan"
            )
        if self.readonly and version < len(migrations):
            raise StoreError(_STALE_READONLY.format(path=self.path, what=f"{component} tables"))
        for number in range(version, len(migrations)):
            try:
                self.db.execute("BEGIN")
                for statement in _statements(migrations[number]):
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT OR REPLACE INTO schema_versions (component, version) VALUES (?, ?)",
                    (component, number + 1),
                )
                self.db.execute("COMMIT")
            except sqlite3.Error as error:
                self.db.execute("ROLLBACK")
                raise StoreError(f"migrating {component} in {self.path} failed: {error}") from None

    def checkpoint(self) -> None:
        """Commit, and fold the write-ahead log into the database file, so a copy of the file
        alone holds everything."""
        self.commit()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        try:
            if self.failure is None:  # after a failure there is nothing left to commit
                self.commit()
        finally:
            self.db.close()
            self._drop_reserve()

    # -- room to finish -----------------------------------------------------------------------

    def reserve_space(self, size: int) -> None:
        """Set ``size`` bytes aside beside glan.db (``glan.reserve``, removed on close): when the
        disk fills, ``rescue`` gives them back to store the replies of the last moment. OSError
        when even that does not fit (the disk is full already)."""
        path = self.path.parent / RESERVE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as error:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            if is_full(error):
                raise
            return  # a filesystem that cannot allocate ahead: run without the reserve
        os.close(fd)
        self._reserve = path

    def stop_writing(self, cause: BaseException) -> None:
        """Something else of the run cannot be written (instructions.jsonl): commit what is
        written, then take no more writes; replies that still come in wait for ``rescue``."""
        if self.failure is None:
            with contextlib.suppress(StoreWriteError):
                self.commit()
        if self.failure is None:
            self.failure = StoreWriteError(f"stopped writing {self.path}: {cause}", cause)

    def _drop_reserve(self) -> None:
        if self._reserve is not None:
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            self._reserve = None

    def rescue(self) -> int:
        """After a failed write: store the replies it kept out, with the reserve given back.
        Returns how many could still not be stored (they will be asked again)."""
        if not self.unsaved:
            return 0
        self._drop_reserve()
        for _ in range(2):
            try:
                self.db.execute("BEGIN")
                self.db.executemany(_RESCUE_CALL, self.unsaved)
                # Their items may not exist, or not be done: the next run finds these replies
                # only if it looks up every item's requests, new ones too.
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, 'true')", (RESCUED_META,)
                )
                self.db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    # fold the write-ahead log into the database: it may give room back
                    self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                continue
            self.unsaved = []
            return 0
        return len(self.unsaved)

    # -- transactions -------------------------------------------------------------------------

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        if self.failure is not None:
            raise self.failure
        try:
            if not self._in_tx:
                self.db.execute("BEGIN")
                self._in_tx = True
            return self.db.execute(sql, tuple(params))
        except sqlite3.OperationalError as error:
            raise self._failed(f"writing {self.path} failed: {error}", error) from None

    def _failed(self, message: str, cause: sqlite3.Error) -> StoreWriteError:
        """A write failed: give up the transaction (SQLite may have rolled it back already),
        keep its replies for ``rescue``, and refuse every write from now on."""
        if self.failure is None:
            self.failure = StoreWriteError(message, cause)
        with contextlib.suppress(sqlite3.Error):
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        self._in_tx = False
        self.unsaved.extend(self._tx_calls)
        self._tx_calls = []
        self._after_commit = []  # what they would have done depended on the lost writes
        return self.failure

    def commit(self) -> None:
        """Make every write so far durable, then wake whoever waits on it."""
        self._commit_scheduled = False
        waiters, self._waiters = self._waiters, []
        try:
            if self.failure is not None:
                raise self.failure
            if self._in_tx:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.OperationalError as error:
                    raise self._failed(f"committing {self.path} failed: {error}", error) from None
                self._in_tx = False
            self._tx_calls = []
        except StoreError as error:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            raise
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def durable(self) -> None:
        """Wait until the writes made so far are committed.

        The commit runs on the event loop's next turn, so every reply that arrived in this turn
        shares it (group commit) and none waits longer than one turn.
        """
        if self.failure is not None:
            raise self.failure
        if not self._in_tx:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if not self._commit_scheduled:
            self._commit_scheduled = True
            loop.call_soon(self._commit_soon)
        await waiter

    def _commit_soon(self) -> None:
        with contextlib.suppress(StoreError):  # the waiters carry it to whoever waits
            self.commit()

    def after_commit(self, callback: Any) -> None:
        self._after_commit.append(callback)

    @property
    def dirty(self) -> bool:
        return self._in_tx or bool(self._waiters)

    # -- meta and invocations -----------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def meta_like(self, prefix: str) -> dict[str, Any]:
        """Every meta value whose key starts with ``prefix``, by key."""
        rows = self.db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return {key: json.loads(value) for key, value in rows}

    def set_meta(self, key: str, value: Any) -> None:
        self._write(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    def last_invocation(self) -> dict[str, Any]:
        """The config of the latest run that used this store ({} when none did)."""
        row = self.db.execute(
            "SELECT config FROM invocations ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        return json.loads(row[0]) if row else {}

    def log_invocation(self, config: dict[str, Any]) -> None:
        self._write(
            "INSERT INTO invocations (started_at, config) VALUES (?, ?)",
            (time.time(), json.dumps(config, default=str)),
        )


_STALE_READONLY = (
    "{path} was written by an older glan and its {what} must be upgraded, which this read-only"
    " open cannot do; run any glan command that writes to it (glan generate) once, or copy the run"
    " directory somewhere writable"
)


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that never writes: ``mode=ro``; on a read-only directory also
    ``immutable=1`` (SQLite cannot make the shared-memory file a WAL reader needs there), unless a
    write-ahead log is there, whose commits ``immutable`` would not see."""
    if not path.is_file():
        raise StoreError(f"cannot open the run store {path}: no such file")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK) and not wal.exists():
        uri += "&immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        where = path.parent
        if wal.exists() and not os.access(where, os.W_OK):
            raise StoreError(
                f"cannot read {path}: {where} is read-only and holds an unfinished write-ahead log"
                f" ({wal.name}); copy the run directory somewhere writable and read it there"
            ) from None
        raise StoreError(f"cannot open the run store {path} read-only: {error}") from None
    return db


def _statements(script: str) -> list[str]:
    """Split a script into statements the way sqlite does (a ';' in a comment or string is no
    end), so each runs inside the migration's own transaction."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not _only_comments(current):
        if not sqlite3.complete_statement(current + ";"):
            raise StoreError(f"incomplete SQL statement in a migration: {current.strip()[:80]}")
        statements.append(current.strip())
    return [s for s in statements if not _only_comments(s)]


def _only_comments(sql: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in sql.splitlines())
