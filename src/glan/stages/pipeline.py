"""The GLAN tree as stages: which stage works on which kind of node, and how the tree grows.

Shared by every engine, so the local and Ray engines cannot disagree on ids or prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from glan.config import GenerateConfig
from glan.ids import stable_id
from glan.items import Item, NewItem
from glan.stages import AnswerStage, QuestionStage, Stage, SubjectsStage, SyllabusStage

if TYPE_CHECKING:
    from glan.taxonomy import Discipline


class Pipeline:
    """GLAN's workflow (see ``stages.base.Workflow``)."""

    upstream = ("subject", "subject_query")
    regrow = ("discipline", "subject")
    gathered = ("subject_query", "discipline")
    signature_key = "expansion"

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.subjects = SubjectsStage(config)
        self.stages: dict[str, Stage] = {
            stage.item_kind: stage
            for stage in (
                self.subjects,
                SyllabusStage(config),
                QuestionStage(config),
                AnswerStage(config),
            )
        }

    def roots(self, disciplines: Iterable[Discipline]) -> list[NewItem]:
        """Discipline nodes (nothing to ask) and their subject queries."""
        nodes: list[NewItem] = []
        for seq, discipline in enumerate(disciplines):
            root = NewItem(
                id=discipline.id,
                kind="discipline",
                parent_id=None,
                root=discipline.id,
                seq=seq,
                status="done",
                data={
                    "field": discipline.field,
                    "sub_field": discipline.sub_field,
                    "discipline": discipline.name,
                    "path": list(discipline.path),
                    "description": discipline.description,
                },
            )
            nodes.append(root)
            nodes.extend(self.subjects.queries(root.as_item()))
        return nodes

    def children(self, node: Item) -> list[NewItem]:
        """The children of a finished node (pure: the same node gives the same children)."""
        if node.kind == "discipline":
            return self.subjects.queries(node)
        return self.stages[node.kind].expand(node)

    def merge(self, parent: Item, siblings: list[Item]) -> list[NewItem]:
        return self.subjects.merge(parent, siblings)

    def expansion_signature(self) -> str:
        """Changes when a setting that shapes the tree does: then finished nodes are re-expanded."""
        c = self.config
        return stable_id(
            c.subject_queries,
            c.max_subjects_per_discipline,
            c.questions_per_syllabus,
            c.challenging_ratio,
            c.seed,
            *(("cover",) if c.question_sampling == "cover" else ()),
        )
