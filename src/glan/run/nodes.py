"""The ``nodes`` table: every item of the tree by id, and the store as the engine's queue
(``Store`` inherits it)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from glan.items import Item, NewItem


class Nodes:
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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
