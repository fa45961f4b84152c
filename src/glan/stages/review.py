"""The review workflow: a run's finished pairs judged and verified on the same engine.

Each row gets a ``judgement`` item (with ``judge``) and a ``verification`` item with N+1
``verify_sample`` children (with ``verify N``), all planted at once under one root of their own,
so they are stored, resumed, retried and rate-limited like any stage, and never mixed with the
pipeline's items. Ids derive from the row's id and the model, so asking again with another judge
makes new judgements and keeps the old ones; raising N asks only the new samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from glan.config import GenerateConfig
from glan.ids import stable_id
from glan.items import Item, NewItem
from glan.stages.base import FlatWorkflow
from glan.stages.judge import JudgeStage
from glan.stages.verify import Agreement, SampleStage, agreement

ROOT = "review"  # the root of every review item: apart from the pipeline's disciplines
_LINEAGE = ("field", "discipline", "subject", "level", "sessions", "key_concepts", "question_type")


class ReviewWorkflow(FlatWorkflow):
    """A ``Workflow`` (see stages/base.py) of the two review stages."""

    signature_key = "expansion:review"

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.judge = JudgeStage(config)
        self.verify = SampleStage(config)
        self.stages: dict[str, Any] = {
            self.judge.item_kind: self.judge,
            self.verify.item_kind: self.verify,
        }

    def plant(self, rows: Iterable[dict[str, Any]]) -> Iterator[NewItem]:
        """The review items of ``rows``: what the config asks for each."""
        judge_model = self.config.stage("judge").model
        verify_model = self.config.stage("verify").model
        for seq, row in enumerate(rows):
            meta = row.get("meta") or {}
            where = {"field": meta.get("field"), "discipline": meta.get("discipline")}
            data = {"row_id": row["id"], "messages": row["messages"], **where}
            if self.config.judge:
                lineage = {key: meta.get(key) for key in _LINEAGE}
                yield NewItem(
                    stable_id(row["id"], "judge", judge_model),
                    self.judge.item_kind,
                    None,
                    ROOT,
                    seq,
                    {**data, **lineage, "model": judge_model},
                )
            if self.config.verify:
                parent = stable_id(row["id"], "verify", verify_model)
                yield NewItem(
                    parent,
                    "verification",
                    None,
                    ROOT,
                    seq,
                    {**data, "model": verify_model},
                    status="done",
                )
                for index in range(self.config.verify + 1):
                    yield NewItem(
                        stable_id(parent, index),
                        self.verify.item_kind,
                        parent,
                        ROOT,
                        index,
                        {"index": index},
                    )

    def expansion_signature(self) -> str:
        return ROOT


@dataclass(frozen=True)
class Review:
    """What the review found of one row."""

    field: str | None = None
    discipline: str | None = None
    score: int | None = None  # the judge's overall score
    scores: dict[str, int] | None = None  # per criterion
    reason: str | None = None
    agreement: Agreement | None = None


class Items(Protocol):
    def nodes(self, kind: str, status: str | None = None, page: int = 1000) -> Iterator[Item]: ...


def reviews(store: Items) -> dict[str, Review]:
    """Every reviewed row's ``Review``, by row id: the latest judgement (of the judge model used
    last) and the agreement of its samples so far."""
    # only the verdicts are kept (an item holds its row's messages too): a review of millions of
    # rows stays within memory
    judged: dict[str, dict[str, Any]] = {}
    where: dict[str, tuple[str | None, str | None]] = {}  # row id -> (field, discipline)
    for item in store.nodes("judgement", "done"):
        judged[item.data["row_id"]] = item.result  # in insertion order: the latest wins
        where[item.data["row_id"]] = (item.data.get("field"), item.data.get("discipline"))
    latest: dict[str, str] = {}  # row id -> its verification of the model used last
    for item in store.nodes("verification"):
        latest[item.data["row_id"]] = item.id
        where[item.data["row_id"]] = (item.data.get("field"), item.data.get("discipline"))
    rows = {verification: row_id for row_id, verification in latest.items()}
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in store.nodes("verify_sample", "done"):
        if item.parent_id in rows:
            samples[rows[item.parent_id]].append({"index": item.data["index"], **item.result})
    found: dict[str, Review] = {}
    for row_id in judged.keys() | samples.keys():
        verdict = judged.get(row_id)
        ordered = sorted(samples.get(row_id, []), key=lambda s: s["index"])
        found[row_id] = Review(
            *where.get(row_id, (None, None)),
            score=verdict["overall"] if verdict else None,
            scores={k: v for k, v in verdict.items() if isinstance(v, int)} if verdict else None,
            reason=verdict["reason"] if verdict else None,
            agreement=agreement(ordered),
        )
    return found
