"""A local run's rows for another process to read on its own (a curation worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from glan.run.rows import SUPERSEDED
from glan.run.store import _open_readonly


class OutputReader:
    """Output rows by number, less the superseded ones: it pickles as the store's path, and
    opens a read-only connection where it is first used."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: Any = None
        self._sql = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def rows(self, first: int, last: int) -> list[tuple[int, Any]]:
        """(out_seq, row) of the output rows numbered ``first`` to ``last``, in order."""
        if self._db is None:
            self._db = _open_readonly(self.path)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._sql = "SELECT out_seq, result FROM nodes WHERE out_seq BETWEEN ? AND ?"
            if self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SUPERSEDED,)
            ).fetchone():
                self._sql += f" AND out_seq NOT IN (SELECT out_seq FROM {SUPERSEDED})"
            self._sql += " ORDER BY out_seq"
        return [
            (out_seq, orjson.loads(result))
            for out_seq, result in self._db.execute(self._sql, (first, last))
        ]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
