"""The tree GLAN grows: every item (discipline, subject query, subject, question spec, answer,
and in conversations each follow-up and reply) with a stable id derived from its parent's id and
its position, so the same inputs give the same tree, the same prompts and the same samples.
Stages make items; the run directory stores them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A row's meta, in order: where its question came from, then how the row was made.
FROM_QUESTION = (
    "field",
    "sub_field",
    "discipline",
    "subject",
    "level",
    "sessions",
    "key_concepts",
    "question_type",
)
SINGLE_TURN_META = (
    *FROM_QUESTION,
    "question_model",
    "answer_model",
    "prompt_version",
    "seed",
    "language",
    "syllabus_language",
    "question_id",
    "truncated",
)
# Conversations (--turns > 1) add the user turns and the kind of each follow-up (turn 2 on). A
# single-turn row has neither key: read it as 1 turn and no follow-ups.
CONVERSATION_META = ("turns", "followup_kinds")
META_KEYS = (*SINGLE_TURN_META, *CONVERSATION_META)


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    parent_id: str | None
    root: str  # the discipline this node belongs to
    seq: int
    data: dict[str, Any]
    status: str = "pending"
    result: Any = None
    error: str | None = None
    attempts: int = 0
    # Not stored: the item besides its parent that its stage reads, looked up by the engine
    # (``Workflow.context``): a conversation's follow-up reads the syllabus of its subject.
    context: Item | None = field(default=None, compare=False, repr=False)

    def done(self, result: Any) -> Item:
        """This node, finished with ``result``."""
        return Item(
            self.id, self.kind, self.parent_id, self.root, self.seq, self.data, "done", result
        )


@dataclass(frozen=True)
class NewItem:
    """A child to insert; ``status='done'`` for items that need no call (disciplines, subjects)."""

    id: str
    kind: str
    parent_id: str | None
    root: str
    seq: int
    data: dict[str, Any]
    status: str = "pending"
    result: Any = None

    def as_item(self) -> Item:
        """The item as the store gives it back once inserted."""
        return Item(
            self.id,
            self.kind,
            self.parent_id,
            self.root,
            self.seq,
            self.data,
            self.status,
            self.result,
        )
