"""The GLAN tree as stages: which stage works on which kind of node, and how the tree grows.

Shared by every engine, so the local and Ray engines cannot disagree on ids or prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from glan.config import GenerateConfig
from glan.ids import stable_id
from glan.items import Item, NewItem
from glan.stages import AnswerStage, QuestionStage, Stage, SubjectsStage, SyllabusStage
from glan.stages.turns import FollowupStage, ReplyStage

if TYPE_CHECKING:
    from glan.taxonomy import Discipline


class Pipeline:
    """GLAN's workflow (see ``stages.base.Workflow``)."""

    upstream = ("subject", "subject_query")
    gathered = ("subject_query", "discipline")
    signature_key = "expansion"

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.subjects = SubjectsStage(config)
        questions = QuestionStage(config)
        self.stages: dict[str, Stage] = {
            stage.item_kind: stage
            for stage in (
                self.subjects,
                SyllabusStage(config),
                questions,
                AnswerStage(config),
                FollowupStage(config, questions),
                ReplyStage(config),
            )
        }
        # Conversations grow from their last turn when --turns is raised: finished answers and
        # replies are expanded again then.
        self.regrow: tuple[str, ...] = ("discipline", "subject")
        if config.turns > 1:
            self.regrow += ("answer", "reply")

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

    def context(self, node: Item, get: Callable[[str], Item]) -> Item | None:
        """The item besides its parent that ``node``'s stage reads: a follow-up reads its
        subject (the syllabus), a reply the turn before its follow-up (the conversation)."""
        if node.kind == "followup":
            return get(get(node.data["question_id"]).parent_id or "")
        if node.kind == "reply":
            return get(get(node.parent_id or "").parent_id or "")
        return None

    def is_row(self, node: Item) -> bool:
        """Whether a finished item is a row of the dataset: the answer with --turns 1, else the
        reply of the last turn."""
        if node.kind == "answer":
            return self.config.turns == 1
        if node.kind == "reply":
            return int(node.data["turn"]) == self.config.turns
        return False

    def expansion_signature(self) -> str:
        """Changes when a setting that shapes the tree does: then finished nodes are re-expanded."""
        c = self.config
        shape: tuple[object, ...] = (
            c.subject_queries,
            c.max_subjects_per_discipline,
            c.questions_per_syllabus,
            c.challenging_ratio,
            c.seed,
            *(("cover",) if c.question_sampling == "cover" else ()),
        )
        if c.turns > 1:  # --turns 1 keeps the signature runs made before conversations had
            shape += (c.turns, c.followup_mix)
        return stable_id(*shape)
