"""The layouts a trainer reads: chat ``messages`` (OpenAI/TRL style), ``sharegpt``
(``conversations`` with ``from``/``value``) and ``alpaca`` (``instruction``/``input``/``output``),
each with the row's lineage as flat, typed columns beside the text.

Conversations (``--turns`` above 1) keep every turn in ``messages`` and ``sharegpt`` (human and
gpt alternate); Alpaca has no turns, so it takes a conversation's first turn (question and answer)
and the export says how many conversations it cut so (``ExportResult.first_turn_only``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from glan.curation.errors import require
from glan.items import META_KEYS
from glan.stages.review import Review

FORMATS = ("messages", "sharegpt", "alpaca")
LINEAGE = META_KEYS  # every meta key becomes a column
_LISTS = ("sessions", "key_concepts", "followup_kinds")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def lineage(row: dict[str, Any]) -> dict[str, Any]:
    """The row's lineage as flat, typed columns. A missing text is "" rather than null: JSON
    readers (datasets' among them) take a column's type from its first rows, and a column that
    starts null cannot take a string later."""
    meta = row.get("meta") or {}
    values: dict[str, Any] = {}
    for key in LINEAGE:
        value = meta.get(key)
        if key in _LISTS:
            values[key] = [str(v) for v in value or []]
        elif key == "truncated":
            values[key] = bool(value)
        elif key == "seed":
            values[key] = None if value is None else int(value)
        elif key == "turns":  # a row without it is a single question and answer
            values[key] = 1 if value is None else int(value)
        else:
            values[key] = "" if value is None else str(value)
    return values


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": str(m.get("role")), "content": str(m.get("content") or "")}
        for m in row.get("messages") or []
    ]


def _content(messages: list[dict[str, str]], role: str) -> str:
    return next((m["content"] for m in messages if m["role"] == role), "")


def to_messages(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "messages": _messages(row), **lineage(row)}


def to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    conversations = [
        {"from": _SHAREGPT_ROLES.get(m["role"], m["role"]), "value": m["content"]}
        for m in _messages(row)
    ]
    return {"id": row["id"], "conversations": conversations, **lineage(row)}


def to_alpaca(row: dict[str, Any]) -> dict[str, Any]:
    """The first turn only: Alpaca has no place for more (see ``user_turns``)."""
    messages = _messages(row)
    return {
        "id": row["id"],
        "instruction": _content(messages, "user"),
        "input": "",
        "output": _content(messages, "assistant"),
        **lineage(row),
    }


def user_turns(row: dict[str, Any]) -> int:
    return sum(1 for m in row.get("messages") or [] if m.get("role") == "user")


LAYOUTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "messages": to_messages,
    "sharegpt": to_sharegpt,
    "alpaca": to_alpaca,
}


# Beside the lineage when the run was reviewed (glan judge): the judge's overall score and reason,
# the share of extra answers agreeing with the pair's final answer, and whether the answer is
# the majority's (export --majority-answers).
REVIEW_COLUMNS = ("judge_score", "judge_reason", "agreement", "majority_answer")


def review_columns(review: Review | None) -> dict[str, Any]:
    agreement = review.agreement if review is not None else None
    return {
        "judge_score": review.score if review is not None else None,
        "judge_reason": (review.reason or "") if review is not None else "",
        "agreement": agreement.share if agreement is not None else None,
        "majority_answer": False,
    }


def with_majority_answer(row: dict[str, Any], review: Review | None) -> dict[str, Any] | None:
    """The row with its first answer replaced by the majority's, when a majority of the extra
    answers contradicts it; None otherwise."""
    agreement = review.agreement if review is not None else None
    if agreement is None or not agreement.contradicted or not agreement.majority_answer:
        return None
    messages = [dict(m) for m in row["messages"]]
    first = next(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    messages[first]["content"] = agreement.majority_answer
    return {**row, "messages": messages}


def arrow_schema(layout: str, *, reviewed: bool = False) -> Any:
    """The Parquet/Arrow schema of a layout; explicit, so every shard has the same one (a shard
    whose ``language`` happens to be all null would otherwise get a column of type null)."""
    pa = require("pyarrow", "curate")
    text = pa.string()
    turns = {
        "messages": [
            pa.field("messages", pa.list_(pa.struct([("role", text), ("content", text)])))
        ],
        "sharegpt": [
            pa.field("conversations", pa.list_(pa.struct([("from", text), ("value", text)])))
        ],
        "alpaca": [
            pa.field("instruction", text),
            pa.field("input", text),
            pa.field("output", text),
        ],
    }[layout]
    types = {name: pa.list_(text) for name in _LISTS}
    types.update(seed=pa.int64(), turns=pa.int64(), truncated=pa.bool_())
    columns = [pa.field(name, types.get(name, text)) for name in LINEAGE]
    if reviewed:
        types.update(judge_score=pa.int64(), agreement=pa.float64(), majority_answer=pa.bool_())
        columns += [pa.field(name, types.get(name, text)) for name in REVIEW_COLUMNS]
    return pa.schema([pa.field("id", text), *turns, *columns])
