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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from glan.items import Item, NewItem
from glan.llm.types import ChatRequest, ChatResponse

DB_NAME = "glan.db"

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
]


class StoreError(Exception):
    """The run directory cannot be used (not writable, disk full, newer schema)."""


class Store:
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
        self.commit()
        self.db.close()

    # -- transactions -------------------------------------------------------------------------

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True
        try:
            return self.db.execute(sql, tuple(params))
        except sqlite3.OperationalError as error:
            raise StoreError(f"writing {self.path} failed: {error}") from None

    def commit(self) -> None:
        """Make every write so far durable, then wake whoever waits on it."""
        self._commit_scheduled = False
        waiters, self._waiters = self._waiters, []
        try:
            if self._in_tx:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.OperationalError as error:
                    raise StoreError(f"committing {self.path} failed: {error}") from None
                self._in_tx = False
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

    # -- calls --------------------------------------------------------------------------------

    def cached_call(self, key: str) -> ChatResponse | None:
        row = self.db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, latency, model, batch"
            " FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        text, finish_reason, tokens_in, tokens_out, latency, model, batch = row
        return ChatResponse(
            text, finish_reason, tokens_in, tokens_out, latency, model, bool(batch), cached=True
        )

    def save_call(
        self, request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
    ) -> None:
        record = call_record(request, response, node_id=node_id, stage=stage)
        self._write(_INSERT_CALL, record.values())

    def usage(self) -> list[tuple[str, str, bool, int, int, int]]:
        """(stage, model, batch, calls, tokens in, tokens out) of every paid-for reply."""
        return [
            (stage, model, bool(batch), calls, tokens_in or 0, tokens_out or 0)
            for stage, model, batch, calls, tokens_in, tokens_out in self.db.execute(
                "SELECT stage, model, batch, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
                " FROM calls GROUP BY stage, model, batch"
            )
        ]

    # -- nodes --------------------------------------------------------------------------------

    def add_nodes(self, nodes: Iterable[NewItem]) -> int:
        """Insert nodes that are not there yet; returns how many were new."""
        added = 0
        now = time.time()
        for node in nodes:
            cursor = self._write(
                "INSERT OR IGNORE INTO nodes (id, kind, parent_id, root, seq, status, data, result,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node.id,
                    node.kind,
                    node.parent_id,
                    node.root,
                    node.seq,
                    node.status,
                    _dumps(node.data),
                    None if node.result is None else _dumps(node.result),
                    now,
                ),
            )
            added += cursor.rowcount
        return added

    def finish(self, node: Item, result: Any, *, output: bool = False) -> str:
        """Mark a node done with its result (returned as stored, JSON); ``output`` rows get the
        next place in the output."""
        out_seq = None
        if output:
            out_seq = self._next_out_seq
            self._next_out_seq += 1
        text = _dumps(result)
        self._write(
            "UPDATE nodes SET status = 'done', result = ?, error = NULL, attempts = attempts + 1,"
            " out_seq = ?, updated_at = ? WHERE id = ?",
            (text, out_seq, time.time(), node.id),
        )
        return text

    def fail(self, node: Item, error: str) -> None:
        self._write(
            "UPDATE nodes SET status = 'failed', error = ?, attempts = attempts + 1, updated_at = ?"
            " WHERE id = ?",
            (error, time.time(), node.id),
        )

    def retry_failed(self) -> int:
        """Failed items go back to the queue: each run tries them again."""
        return self._write(
            "UPDATE nodes SET status = 'pending' WHERE status = 'failed'"
            " AND root IN (SELECT id FROM active_roots)"
        ).rowcount

    def last_rowid(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM nodes").fetchone()[0]

    def get(self, node_id: str) -> Item | None:
        row = self.db.execute(_NODE_SELECT + " WHERE id = ?", (node_id,)).fetchone()
        return _node(row) if row else None

    def children(self, parent_id: str, kind: str | None = None) -> list[Item]:
        sql = _NODE_SELECT + " WHERE parent_id = ?"
        params: tuple[Any, ...] = (parent_id,)
        if kind is not None:
            sql += " AND kind = ?"
            params += (kind,)
        return [_node(row) for row in self.db.execute(sql + " ORDER BY seq", params)]

    def set_roots(self, roots: Iterable[str]) -> None:
        """The disciplines this invocation works on; the others' pending items wait."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS active_roots (id TEXT PRIMARY KEY)")
        self.db.execute("DELETE FROM active_roots")
        self.db.executemany("INSERT OR IGNORE INTO active_roots VALUES (?)", ((r,) for r in roots))

    def pending(self, kind: str, after_rowid: int, limit: int) -> list[tuple[int, Item]]:
        """The next pending nodes of a kind, in insertion order: the store is the queue."""
        rows = self.db.execute(
            "SELECT rowid, " + _COLUMNS + " FROM nodes WHERE kind = ? AND status = 'pending'"
            " AND rowid > ? AND root IN (SELECT id FROM active_roots) ORDER BY rowid LIMIT ?",
            (kind, after_rowid, limit),
        ).fetchall()
        return [(row[0], _node(row[1:])) for row in rows]

    def nodes(self, kind: str, status: str | None = None, page: int = 1000) -> Iterator[Item]:
        """Every node of a kind, read a page at a time (safe to write to the store meanwhile)."""
        sql = "SELECT rowid, " + _COLUMNS + " FROM nodes WHERE kind = ? AND rowid > ?"
        if status is not None:
            sql += " AND status = ?"
        sql += " ORDER BY rowid LIMIT ?"
        after = 0
        while True:
            params = (kind, after, status, page) if status is not None else (kind, after, page)
            rows = self.db.execute(sql, params).fetchall()
            for row in rows:
                yield _node(row[1:])
            if len(rows) < page:
                return
            after = rows[-1][0]

    def counts(self, active_only: bool = False) -> dict[str, dict[str, int]]:
        """{kind: {status: count}}, of the whole run or of the disciplines being worked on."""
        where = " WHERE root IN (SELECT id FROM active_roots)" if active_only else ""
        counts: dict[str, dict[str, int]] = {}
        for kind, status, count in self.db.execute(
            f"SELECT kind, status, COUNT(*) FROM nodes{where} GROUP BY kind, status"
        ):
            counts.setdefault(kind, {})[status] = count
        return counts

    def errors(self, limit: int = 10) -> list[tuple[str, str, str]]:
        """(kind, id, error) of failed nodes, most recent first."""
        return [(kind, node_id, error) for _, kind, node_id, error in self.failures(limit)]

    def failures(self, limit: int = 10) -> list[tuple[float, str, str, str]]:
        """(when, kind, id, error) of failed nodes, most recent first."""
        return self.db.execute(
            "SELECT updated_at, kind, id, error FROM nodes WHERE status = 'failed'"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        ).fetchall()

    def outputs(self, after_seq: int = 0) -> Iterator[tuple[int, Any]]:
        """Output rows (finished answers) in output order."""
        for out_seq, result in self.db.execute(
            "SELECT out_seq, result FROM nodes WHERE out_seq > ? ORDER BY out_seq", (after_seq,)
        ):
            yield out_seq, orjson.loads(result)

    def last_out_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(out_seq), 0) FROM nodes").fetchone()[0]

    def questions_by_id(self, through: int) -> Iterator[tuple[int, str, str]]:
        """(out_seq, id, question) of every output row up to ``through``, by id.

        ``+out_seq`` keeps SQLite from using the out_seq index (and then sorting a million rows
        by id): it walks the primary-key index instead, in order, a page at a time.
        """
        yield from self.db.execute(
            "SELECT out_seq, id, COALESCE(json_extract(result, '$.messages[0].content'), '')"
            " FROM nodes WHERE +out_seq IS NOT NULL AND +out_seq <= ? ORDER BY id",
            (through,),
        )

    def question(self, column: str, value: Any) -> str:
        """The question of the output row whose ``column`` (id or out_seq) is ``value``."""
        assert column in ("id", "out_seq")
        row = self.db.execute(
            f"SELECT json_extract(result, '$.messages[0].content') FROM nodes WHERE {column} = ?",
            (value,),
        ).fetchone()
        return str(row[0] or "") if row else ""

    def outputs_at(self, out_seqs: Sequence[int], *, questions: bool = False) -> dict[int, str]:
        """{out_seq: id} of these output rows (their questions instead, with ``questions``), in
        one query per few thousand."""
        column = "id"
        if questions:
            column = "COALESCE(json_extract(result, '$.messages[0].content'), '')"
        found: dict[int, str] = {}
        for start in range(0, len(out_seqs), _LOOKUP_BATCH):
            wanted = orjson.dumps(list(out_seqs[start : start + _LOOKUP_BATCH])).decode()
            found.update(
                self.db.execute(
                    f"SELECT out_seq, {column} FROM nodes"
                    " WHERE out_seq IN (SELECT value FROM json_each(?))",
                    (wanted,),
                )
            )
        return found

    def output_id(self, out_seq: int) -> str | None:
        row = self.db.execute("SELECT id FROM nodes WHERE out_seq = ?", (out_seq,)).fetchone()
        return row[0] if row else None

    def out_seq_of(self, node_id: str) -> int | None:
        row = self.db.execute("SELECT out_seq FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return row[0] if row else None

    def rows_by_root(self) -> dict[str, int]:
        """Output rows per discipline (root id)."""
        return dict(
            self.db.execute(
                "SELECT root, COUNT(*) FROM nodes WHERE out_seq IS NOT NULL GROUP BY root"
            ).fetchall()
        )


class OutputReader:
    """Output rows by number, for another process to read on its own (a curation worker): it
    pickles as the store's path, and opens a read-only connection where it is first used."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._db = None

    def rows(self, first: int, last: int) -> list[tuple[int, Any]]:
        """(out_seq, row) of the output rows numbered ``first`` to ``last``, in order."""
        if self._db is None:
            self._db = _open_readonly(self.path)
            self._db.execute("PRAGMA busy_timeout=10000")
        return [
            (out_seq, orjson.loads(result))
            for out_seq, result in self._db.execute(
                "SELECT out_seq, result FROM nodes WHERE out_seq BETWEEN ? AND ? ORDER BY out_seq",
                (first, last),
            )
        ]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


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


def call_record(
    request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
) -> dict[str, Any]:
    """A paid-for reply as it is kept: a row of ``calls`` here, of a Ray run's calls/ parts."""
    return {
        "key": request.key,
        "node_id": node_id,
        "stage": stage,
        "model": request.model,
        "request": request.packed(),
        "text": response.text,
        "finish_reason": response.finish_reason,
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "latency": response.latency,
        "batch": response.batch,
        "created_at": time.time(),
    }


_LOOKUP_BATCH = 5000  # rows looked up by number in one query
_CALL_COLUMNS = (
    "key, node_id, stage, model, request, text, finish_reason, prompt_tokens,"
    " completion_tokens, latency, batch, created_at"
)
_INSERT_CALL = f"INSERT OR REPLACE INTO calls ({_CALL_COLUMNS}) VALUES ({', '.join('?' * 12)})"
_COLUMNS = "id, kind, parent_id, root, seq, data, status, result, error, attempts"
_NODE_SELECT = f"SELECT {_COLUMNS} FROM nodes"


def _node(row: tuple[Any, ...]) -> Item:
    node_id, kind, parent_id, root, seq, data, status, result, error, attempts = row
    return Item(
        id=node_id,
        kind=kind,
        parent_id=parent_id,
        root=root,
        seq=seq,
        data=orjson.loads(data),
        status=status,
        result=None if result is None else orjson.loads(result),
        error=error,
        attempts=attempts,
    )


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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
