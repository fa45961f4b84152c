"""The judge: each pair scored on GLAN's rubric by a judge model, as structured output.

The rubric asks what GLAN's design promises of a pair: the question is self-contained, it
exercises the class sessions and key concepts it was sampled from, it suits the subject's level,
and the answer is correct and complete. The judge sees the whole conversation (every turn).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from glan.config import GenerateConfig
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import prompts_for
from glan.stages.base import Teacher, request_for, user

CRITERIA = ("self_contained", "on_syllabus", "level", "correct", "complete")


# A score as an enum, not an integer with bounds: the grammar-constrained modes (llama.cpp, TGI)
# keep a small model to the enum, while they let any integer through a minimum and maximum.
Score = Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def _score(description: str) -> Any:
    return Field(description=f"{description}, from 1 (very poor) to 10 (excellent)")


class Verdict(BaseModel):
    self_contained: Score = _score("the question can be answered as written")
    on_syllabus: Score = _score("it exercises the sampled class sessions and key concepts")
    level: Score = _score("it suits the subject's level")
    correct: Score = _score("the answer is correct")
    complete: Score = _score("the answer is complete and addresses the question")
    overall: Score = _score("how good the pair is as training material")
    reason: str = Field(description="one or two sentences: the main weakness, or its strength")


class JudgeStage:
    """A ``judgement`` item holds one row (its conversation and lineage); its result is the
    ``Verdict``."""

    item_kind: ClassVar[str] = "judgement"
    name: ClassVar[str] = "judge"
    output: ClassVar[bool] = False
    schema: ClassVar[type[BaseModel]] = Verdict

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)

    def request(self, node: Item, parent: Item) -> ChatRequest:
        row = node.data
        prompt = self.prompts.render(
            "judge",
            discipline=row.get("discipline") or "",
            subject=row.get("subject") or "",
            level=row.get("level") or "",
            sessions=row.get("sessions") or [""],
            key_concepts=row.get("key_concepts") or [],
            conversation=[m for m in row["messages"] if m.get("role") != "system"],
        )
        return request_for(self.config, self.settings, node, user(prompt))

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        verdict = await teacher.json(self.request(node, parent), Verdict)
        return verdict.model_dump()

    def expand(self, node: Item) -> list[NewItem]:
        return []
