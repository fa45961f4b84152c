"""A syllabus per subject: class sessions, each with key concepts (paper 3.3)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from glan.config import GenerateConfig
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import prompts_for
from glan.stages.base import Teacher, draft_then_json, request_for, user
from glan.stages.questions import sample_specs


class ClassSession(BaseModel):
    title: str
    description: str
    key_concepts: list[str] = Field(description="about five short noun phrases")


class Syllabus(BaseModel):
    introduction: str
    sessions: list[ClassSession] = Field(description="the class sessions in teaching order")

    # Checked here rather than as minItems in the schema: OpenAI's strict mode rejects some
    # constraints, and a validation error gets a repair turn like any other.
    @field_validator("sessions")
    @classmethod
    def _has_sessions(cls, sessions: list[ClassSession]) -> list[ClassSession]:
        kept = [
            s.model_copy(update={"key_concepts": [c.strip() for c in s.key_concepts if c.strip()]})
            for s in sessions
        ]
        kept = [s for s in kept if s.key_concepts]
        if not kept:
            raise ValueError("the syllabus needs at least one class session with key concepts")
        return kept


class SyllabusStage:
    """A ``subject`` node is done when its syllabus is; its children are question specs."""

    item_kind: ClassVar[str] = "subject"
    name: ClassVar[str] = "syllabus"
    output: ClassVar[bool] = False
    schema: ClassVar[type[BaseModel]] = Syllabus

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        self.convert = self.prompts.render("syllabus_json")

    def request(self, node: Item, parent: Item) -> ChatRequest:
        return request_for(
            self.config,
            self.settings,
            node,
            user(
                self.prompts.render(
                    "syllabus",
                    discipline=node.data["discipline"],
                    subject=node.data["subject"],
                    level=node.data["level"],
                    subtopics=node.data["subtopics"],
                    language=self.config.syllabus_language,
                )
            ),
        )

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        syllabus = await draft_then_json(
            teacher, self.request(node, parent), self.convert, self.schema, self.config.single_turn
        )
        return syllabus.model_dump()

    def expand(self, node: Item) -> list[NewItem]:
        return sample_specs(self.config, node)
