"""Subjects per discipline: several queries at T=1.0, merged and de-duplicated (paper 3.2)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from glan.config import GenerateConfig
from glan.ids import stable_id
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import prompts_for
from glan.stages.base import Teacher, draft_then_json, request_for, user


class Subject(BaseModel):
    name: str = Field(description="the subject's name, as in a course catalogue")
    level: str = Field(description="e.g. high school, undergraduate, graduate, professional")
    subtopics: list[str] = Field(description="the main subtopics the subject covers")


class SubjectList(BaseModel):
    subjects: list[Subject]

    @field_validator("subjects")
    @classmethod
    def _named(cls, subjects: list[Subject]) -> list[Subject]:
        named = [s for s in subjects if s.name.strip()]
        if not named:
            raise ValueError("the list needs at least one named subject")
        return named


class SubjectsStage:
    """A ``subject_query`` node is one sample of the discipline's subject list."""

    item_kind: ClassVar[str] = "subject_query"
    name: ClassVar[str] = "subjects"
    output: ClassVar[bool] = False
    schema: ClassVar[type[BaseModel]] = SubjectList

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        self.convert = self.prompts.render("subjects_json")

    def queries(self, discipline: Item) -> list[NewItem]:
        return [
            NewItem(
                id=stable_id(discipline.id, "subjects", q),
                kind=self.item_kind,
                parent_id=discipline.id,
                root=discipline.root,
                seq=q,
                data={"query": q},
            )
            for q in range(self.config.subject_queries)
        ]

    def request(self, node: Item, parent: Item) -> ChatRequest:
        lineage = parent.data
        return request_for(
            self.config,
            self.settings,
            node,
            user(
                self.prompts.render(
                    "subjects",
                    discipline=lineage["discipline"],
                    path=" > ".join(lineage["path"][:-1]),
                    description=lineage.get("description"),
                    language=self.config.syllabus_language,
                )
            ),
            tag=f"query-{node.data['query']}",
        )

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        listing = await draft_then_json(
            teacher, self.request(node, parent), self.convert, self.schema, self.config.single_turn
        )
        return [subject.model_dump() for subject in listing.subjects]

    def expand(self, node: Item) -> list[NewItem]:
        return []  # subjects need every query of the discipline: see merge()

    def merge(self, discipline: Item, queries: list[Item]) -> list[NewItem]:
        """All queries of a discipline answered: the subjects, de-duplicated, first seen first."""
        subjects: dict[str, NewItem] = {}
        cap = self.config.max_subjects_per_discipline
        for query in sorted(queries, key=lambda q: q.seq):
            for subject in query.result:
                key = normalise(subject["name"])
                if key in subjects or (cap is not None and len(subjects) >= cap):
                    continue
                subjects[key] = NewItem(
                    id=stable_id(discipline.id, "subject", key),
                    kind="subject",
                    parent_id=discipline.id,
                    root=discipline.root,
                    seq=len(subjects),
                    data={
                        **discipline.data,
                        "subject": subject["name"].strip(),
                        "level": subject["level"].strip(),
                        "subtopics": subject["subtopics"],
                    },
                )
        return list(subjects.values())


def normalise(name: str) -> str:
    """Subject names that differ only in case, spacing or punctuation are the same subject."""
    return re.sub(r"[\W_]+", " ", name.casefold()).strip()
