"""Question specs sampled from a syllabus, and one homework question per spec (paper 3.4).

Two strategies, both from the paper: "basic" picks one class session and 1-5 of its key concepts;
"challenging" picks two sessions and 2-5 key concepts that span both.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, ClassVar

from glan.config import GenerateConfig
from glan.ids import stable_id, stable_int
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import prompts_for
from glan.stages.base import Teacher, request_for, user

MAX_CONCEPTS = 5


def sample_spec(
    sessions: list[dict[str, Any]], rng: random.Random, challenging_ratio: float
) -> dict[str, Any]:
    """One question spec: which sessions (0-based) and which of their key concepts."""
    if len(sessions) >= 2 and rng.random() < challenging_ratio:
        first, second = sorted(rng.sample(range(len(sessions)), 2))
        a, b = sessions[first]["key_concepts"], sessions[second]["key_concepts"]
        union = list(dict.fromkeys(a + b))
        if len(union) >= 2:
            # Spanning both sessions: one concept from each, then the rest from either.
            from_a = rng.choice(a)
            from_b = rng.choice([c for c in b if c != from_a] or b)
            picked = list(dict.fromkeys([from_a, from_b]))
            count = rng.randint(2, min(MAX_CONCEPTS, len(union)))
            picked += rng.sample([c for c in union if c not in picked], count - len(picked))
            return {"type": "challenging", "sessions": [first, second], "key_concepts": picked}
    index = rng.randrange(len(sessions))
    concepts = list(dict.fromkeys(sessions[index]["key_concepts"]))
    count = rng.randint(1, min(MAX_CONCEPTS, len(concepts)))
    return {"type": "basic", "sessions": [index], "key_concepts": rng.sample(concepts, count)}


class Coverage:
    """``question_sampling: cover``: each spec takes the sessions and key concepts used least so
    far (ties drawn at random), so a syllabus's sessions and concepts are all used before any is
    used again; still seeded, so the same syllabus and seed give the same specs."""

    def __init__(self, sessions: list[dict[str, Any]]) -> None:
        self.sessions = sessions
        self.session_uses = [0] * len(sessions)
        self.concept_uses: dict[str, int] = {}

    def sample(self, rng: random.Random, challenging_ratio: float) -> dict[str, Any]:
        # sessions never used, then those with concepts never used, then the least used
        order = sorted(
            range(len(self.sessions)),
            key=lambda s: (
                min(self.session_uses[s], 1),
                not self._fresh(s),
                self.session_uses[s],
                rng.random(),
            ),
        )
        if len(order) >= 2 and rng.random() < challenging_ratio:
            first, second = sorted(order[:2])
            a, b = self._least(first, rng), self._least(second, rng)
            union = list(dict.fromkeys(a + b))
            if len(union) >= 2:
                picked = list(dict.fromkeys([a[0], next((c for c in b if c != a[0]), b[0])]))
                rest = sorted((c for c in union if c not in picked), key=self._uses)
                count = self._count(rng.randint(2, min(MAX_CONCEPTS, len(union))), union, 2)
                spec = {"type": "challenging", "sessions": [first, second]}
                return self._used({**spec, "key_concepts": picked + rest[: count - len(picked)]})
        index = order[0]
        concepts = self._least(index, rng)
        count = self._count(rng.randint(1, min(MAX_CONCEPTS, len(concepts))), concepts, 1)
        return self._used({"type": "basic", "sessions": [index], "key_concepts": concepts[:count]})

    def _count(self, drawn: int, concepts: list[str], least: int) -> int:
        """While some concepts are unused, take no used one along with them."""
        fresh = sum(1 for c in concepts if not self._uses(c))
        return max(least, min(drawn, fresh)) if fresh else drawn

    def _fresh(self, session: int) -> bool:
        return any(not self._uses(c) for c in self.sessions[session]["key_concepts"])

    def _least(self, session: int, rng: random.Random) -> list[str]:
        concepts = list(dict.fromkeys(self.sessions[session]["key_concepts"]))
        return sorted(concepts, key=lambda c: (self._uses(c), rng.random()))

    def _uses(self, concept: str) -> int:
        return self.concept_uses.get(concept, 0)

    def _used(self, spec: dict[str, Any]) -> dict[str, Any]:
        for session in spec["sessions"]:
            self.session_uses[session] += 1
        for concept in spec["key_concepts"]:
            self.concept_uses[concept] = self._uses(concept) + 1
        return spec


def sample_specs(config: GenerateConfig, subject: Item) -> list[NewItem]:
    """The question nodes of a finished syllabus. Spec ``i`` depends only on (seed, subject, i)
    (with ``cover``, on the specs before it too), so asking for more questions per syllabus later
    keeps the first ones."""
    sessions = subject.result["sessions"]
    cover = Coverage(sessions) if config.question_sampling == "cover" else None
    nodes = []
    for i in range(config.questions_per_syllabus):
        rng = random.Random(stable_int(config.seed, subject.id, i))
        if cover is not None:
            spec = cover.sample(rng, config.challenging_ratio)
        else:
            spec = sample_spec(sessions, rng, config.challenging_ratio)
        lineage = {k: v for k, v in subject.data.items() if k not in ("subtopics", "description")}
        nodes.append(
            NewItem(
                id=stable_id(subject.id, "question", i),
                kind="question",
                parent_id=subject.id,
                root=subject.root,
                seq=i,
                data={
                    **lineage,
                    "question_type": spec["type"],
                    "session_numbers": [s + 1 for s in spec["sessions"]],
                    "sessions": [sessions[s]["title"] for s in spec["sessions"]],
                    "key_concepts": spec["key_concepts"],
                },
            )
        )
    return nodes


class QuestionStage:
    item_kind: ClassVar[str] = "question"
    name: ClassVar[str] = "question"
    output: ClassVar[bool] = False

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        self._outlines: OrderedDict[str, str] = OrderedDict()

    def outline(self, subject: Item) -> str:
        """The syllabus as the question prompt shows it; rendered once per subject, as every
        question of the subject shows the same."""
        outline = self._outlines.get(subject.id)
        if outline is None:
            outline = self.prompts.render("syllabus_outline", sessions=subject.result["sessions"])
            self._outlines[subject.id] = outline
            if len(self._outlines) > 1024:
                self._outlines.popitem(last=False)
        return outline

    def request(self, node: Item, parent: Item) -> ChatRequest:
        spec = node.data
        prompt = self.prompts.render(
            "question",
            discipline=spec["discipline"],
            subject=spec["subject"],
            level=spec["level"],
            outline=self.outline(parent),
            learned_up_to=max(spec["session_numbers"]),
            question_type=spec["question_type"],
            sessions=[
                {"number": n, "title": t}
                for n, t in zip(spec["session_numbers"], spec["sessions"], strict=True)
            ],
            key_concepts=spec["key_concepts"],
            language=self.config.language,
        )
        return request_for(self.config, self.settings, node, user(prompt))

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        reply = await teacher.text(self.request(node, parent))
        return {
            "question": reply.text.strip(),
            "model": reply.model or self.settings.model,
            "finish_reason": reply.finish_reason,
        }

    def expand(self, node: Item) -> list[NewItem]:
        return [
            NewItem(
                id=stable_id(node.id, "answer"),
                kind="answer",
                parent_id=node.id,
                root=node.root,
                seq=0,
                data={},
            )
        ]
