"""GLAN-Test as a workflow: two candidates answer each held-out question, then a judge scores
both answers 1-10, once in each order (the paper's pairwise protocol).

Items, under a root of their own per evaluation: an ``eval_question`` (done when planted: the
question and its lineage) with two children, ``eval_a`` and ``eval_b`` (each candidate's
answer); when both are in, the workflow's merge adds two ``eval_judgement`` items, order ``ab``
and ``ba``, each carrying both answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from glan.ids import stable_id, stable_int
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import Prompts
from glan.stages.base import FlatWorkflow, Teacher, user
from glan.stages.judge import Score

ORDERS = ("ab", "ba")


@dataclass(frozen=True)
class Candidate:
    side: str  # "a" or "b"
    model: str
    temperature: float
    max_tokens: int


class Pairwise(BaseModel):
    score_1: Score = Field(description="answer 1, from 1 to 10")
    score_2: Score = Field(description="answer 2, from 1 to 10")
    reason: str = Field(description="one or two sentences")


class CandidateStage:
    """One candidate's answer to a held-out question: the question alone, as a user would ask."""

    output: ClassVar[bool] = False

    def __init__(self, candidate: Candidate, seed: int) -> None:
        self.candidate = candidate
        self.item_kind = f"eval_{candidate.side}"
        self.name = f"candidate_{candidate.side}"
        self.seed = seed

    def request(self, node: Item, parent: Item) -> ChatRequest:
        c = self.candidate
        return ChatRequest(
            model=c.model,
            messages=(user(parent.data["question"]),),
            temperature=c.temperature,
            max_tokens=c.max_tokens,
            seed=stable_int(self.seed, node.id, bits=31),
        )

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        reply = await teacher.text(self.request(node, parent))
        return {"answer": reply.text.strip(), "finish_reason": reply.finish_reason}

    def expand(self, node: Item) -> list[NewItem]:
        return []


class PairwiseJudgeStage:
    item_kind: ClassVar[str] = "eval_judgement"
    name: ClassVar[str] = "eval_judge"
    output: ClassVar[bool] = False
    schema: ClassVar[type[BaseModel]] = Pairwise

    def __init__(self, model: str, max_tokens: int, prompts: Prompts) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.prompts = prompts

    def request(self, node: Item, parent: Item) -> ChatRequest:
        first, second = (node.data["answers"][side] for side in node.data["order"])
        prompt = self.prompts.render(
            "eval_judge",
            discipline=parent.data.get("discipline") or "",
            subject=parent.data.get("subject") or "",
            level=parent.data.get("level") or "",
            question=parent.data["question"],
            first=first,
            second=second,
        )
        return ChatRequest(
            model=self.model, messages=(user(prompt),), temperature=0.0, max_tokens=self.max_tokens
        )

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        return (await teacher.json(self.request(node, parent), Pairwise)).model_dump()

    def expand(self, node: Item) -> list[NewItem]:
        return []


class EvalWorkflow(FlatWorkflow):
    """A ``Workflow`` (stages/base.py): both candidates, then the judge in both orders."""

    gathered = (("eval_a", "eval_b"), "eval_question")
    signature_key = "expansion:eval"

    def __init__(
        self, name: str, a: Candidate, b: Candidate, judge: PairwiseJudgeStage, seed: int
    ) -> None:
        self.name = name
        self.root = stable_id("eval", name)
        self.judge = judge
        candidates = [CandidateStage(a, seed), CandidateStage(b, seed)]
        self.stages: dict[str, Any] = {s.item_kind: s for s in [*candidates, judge]}

    def plant(self, rows: Iterable[dict[str, Any]]) -> Iterator[NewItem]:
        for seq, row in enumerate(rows):
            meta = row.get("meta") or {}
            question = stable_id(self.root, row["id"])
            data = {
                "row_id": row["id"],
                "question": row["messages"][0]["content"],
                **{k: meta.get(k) for k in ("field", "discipline", "subject", "level")},
            }
            yield NewItem(question, "eval_question", None, self.root, seq, data, status="done")
            for index, kind in enumerate(("eval_a", "eval_b")):
                yield NewItem(stable_id(question, kind), kind, question, self.root, index, {})

    def merge(self, parent: Item, siblings: list[Item]) -> list[NewItem]:
        """Both answers in: the two judgements, one per order."""
        answers = {s.kind[-1]: s.result["answer"] for s in siblings}
        return [
            NewItem(
                stable_id(parent.id, "judge", order),
                PairwiseJudgeStage.item_kind,
                parent.id,
                parent.root,
                seq,
                {"order": order, "answers": answers},
            )
            for seq, order in enumerate(ORDERS)
        ]

    def expansion_signature(self) -> str:
        return self.root
