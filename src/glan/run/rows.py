"""The dataset's rows as the store holds them: output numbers, questions by id, and rows a
longer conversation superseded (``Store`` inherits it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

_LOOKUP_BATCH = 5000  # rows looked up by number in one query


class Rows:
    def start_superseding(self) -> None:
        """From now on a new output row supersedes the output rows above it in the tree (see
        ``supersede``): ``--turns`` was raised on a run that has rows."""
        self.migrate(SUPERSEDED, _SUPERSEDED_MIGRATIONS)

    def superseding(self) -> bool:
        return self._has_table(SUPERSEDED)

    def supersede(self, node_id: str) -> None:
        """Record the output rows above ``node_id`` (just made an output row) as superseded.

        Raising ``--turns`` makes a question's row so far (its answer, or the reply of the old
        last turn) the start of a longer conversation, whose last reply becomes the question's
        row. The earlier row stays in the store and in instructions.jsonl, which only grow;
        readers of the dataset (curate, export, report, status) skip it. Recorded as the new
        row is finished, in its transaction: a walk up its few ancestors."""
        self._write(_SUPERSEDE, (node_id, node_id))

    def superseded(self) -> bytearray | None:
        """Superseded output rows as flags by out_seq; None when there are none."""
        if not self.superseding():
            return None
        rows = self.db.execute(f"SELECT out_seq FROM {SUPERSEDED} ORDER BY out_seq").fetchall()
        if not rows:
            return None
        flags = bytearray(rows[-1][0] + 1)  # a later row is none
        for (out_seq,) in rows:
            flags[out_seq] = 1
        return flags

    def row_count(self) -> int:
        """Rows of the dataset: output rows less the superseded ones."""
        (total,) = self.db.execute(
            "SELECT COUNT(*) FROM nodes WHERE out_seq IS NOT NULL"
        ).fetchone()
        if self.superseding():
            total -= self.db.execute(f"SELECT COUNT(*) FROM {SUPERSEDED}").fetchone()[0]
        return int(total)

    def _has_table(self, name: str) -> bool:
        found = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None

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
        """Rows per discipline (root id), less superseded ones."""
        where = "out_seq IS NOT NULL"
        if self.superseding():
            where += f" AND out_seq NOT IN (SELECT out_seq FROM {SUPERSEDED})"
        return dict(
            self.db.execute(f"SELECT root, COUNT(*) FROM nodes WHERE {where} GROUP BY root")
        )


SUPERSEDED = "superseded_rows"  # a component of its own (``Store.migrate``): raised runs only
_SUPERSEDED_MIGRATIONS = [
    f"""
    CREATE TABLE {SUPERSEDED} (
        out_seq INTEGER PRIMARY KEY,  -- the superseded row
        by_id TEXT NOT NULL  -- the row that supersedes it
    );
    """
]
# The output rows among a node's ancestors, up to its root (a conversation row at turn 3: six
# ancestors), each step a primary-key lookup.
_SUPERSEDE = f"""
INSERT OR IGNORE INTO {SUPERSEDED} (out_seq, by_id)
SELECT out_seq, ?2 FROM nodes WHERE out_seq IS NOT NULL AND id IN (
    WITH RECURSIVE up(id) AS (
        SELECT parent_id FROM nodes WHERE id = ?1
        UNION ALL
        SELECT n.parent_id FROM up JOIN nodes n ON n.id = up.id WHERE n.parent_id IS NOT NULL
    )
    SELECT id FROM up
)
"""
