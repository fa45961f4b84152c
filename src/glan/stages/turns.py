"""Conversations (``--turns N``): after the answer, the student asks a follow-up and the teacher
replies, until the conversation has N user turns (the paper's data is single-turn; it names that
as its first limitation).

Each turn is two items of the tree, each with an id derived from the one before::

    answer (turn 1) -> followup (turn 2) -> reply (turn 2) -> followup (turn 3) -> reply (turn 3)

so a killed run resumes turn by turn, and raising ``--turns`` on a finished run only grows the
conversations from their last turn. A follow-up is grounded in the course: its prompt carries
the syllabus (the subject's, which the engine looks up as the item's ``context``), the sessions
and key concepts of the question, and the conversation so far; its kind (clarify a step, a variant
with changed data, the next step, a link to a later session, check my attempt) is drawn by seeded
sampling from ``followup_mix``. A reply is asked with the answer's system prompt and the whole
conversation. The reply of the last turn holds the whole conversation: it is the dataset's row.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from glan.config import GenerateConfig
from glan.ids import stable_id, stable_int
from glan.items import META_KEYS, Item, NewItem
from glan.llm.types import ChatRequest, Message
from glan.prompts import prompts_for
from glan.stages.base import Teacher, request_for, system, user
from glan.stages.questions import QuestionStage


def next_followup(turn: Item, question_id: str, number: int) -> NewItem:
    """The follow-up that opens turn ``number`` after ``turn`` (an answer or a reply)."""
    return NewItem(
        id=stable_id(turn.id, "followup"),
        kind="followup",
        parent_id=turn.id,
        root=turn.root,
        seq=0,
        data={"turn": number, "question_id": question_id},
    )


def followup_kind(
    config: GenerateConfig, node: Item, sessions: int, learned_up_to: int
) -> tuple[str, int | None]:
    """The kind of this follow-up, drawn from ``followup_mix`` with a seed of its own id, and for
    ``later_session`` which later session (1-based). A question on the last session has no later
    one: then that kind is not drawn."""
    rng = random.Random(stable_int(config.seed, node.id, "followup"))
    later = list(range(learned_up_to + 1, sessions + 1))
    mix = {
        k: w for k, w in config.followup_mix.items() if w > 0 and (later or k != "later_session")
    }
    if not mix:  # only later_session was wanted, and there is none
        mix = {"next_step": 1.0}
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    return kind, rng.choice(later) if kind == "later_session" else None


class FollowupStage:
    """The student's next message. ``parent``: the turn before (answer or reply, whose result
    holds the conversation); ``node.context``: the subject, whose result is the syllabus."""

    item_kind: ClassVar[str] = "followup"
    name: ClassVar[str] = "followup"
    output: ClassVar[bool] = False

    def __init__(self, config: GenerateConfig, questions: QuestionStage) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        self.questions = questions  # renders (and caches) the syllabus outline

    def plan(self, node: Item, parent: Item) -> dict[str, Any]:
        """What this follow-up asks for: its kind and, for ``later_session``, which session."""
        assert node.context is not None, f"follow-up {node.id} has no subject to read"
        syllabus = node.context.result["sessions"]
        meta = parent.result["meta"]
        numbers = session_numbers(syllabus, meta["sessions"])
        kind, later = followup_kind(self.config, node, len(syllabus), max(numbers))
        return {"kind": kind, "session_numbers": numbers, "later": later}

    def request(self, node: Item, parent: Item, plan: dict[str, Any] | None = None) -> ChatRequest:
        assert node.context is not None
        meta = parent.result["meta"]
        syllabus = node.context.result["sessions"]
        plan = plan or self.plan(node, parent)
        numbers = plan["session_numbers"]
        later = plan["later"]
        prompt = self.prompts.render(
            "followup",
            discipline=meta["discipline"],
            subject=meta["subject"],
            level=meta["level"],
            outline=self.questions.outline(node.context),
            learned_up_to=max(numbers),
            sessions=[
                {"number": n, "title": t} for n, t in zip(numbers, meta["sessions"], strict=False)
            ],
            key_concepts=meta["key_concepts"],
            conversation=parent.result["messages"],
            kind=plan["kind"],
            later=None
            if later is None
            else {
                "number": later,
                "title": syllabus[later - 1]["title"],
                "key_concepts": syllabus[later - 1]["key_concepts"],
            },
            language=self.config.language,
        )
        return request_for(self.config, self.settings, node, user(prompt))

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        plan = self.plan(node, parent)
        reply = await teacher.text(self.request(node, parent, plan))
        return {
            "question": reply.text.strip(),
            "kind": plan["kind"],
            "model": reply.model or self.settings.model,
            "finish_reason": reply.finish_reason,
        }

    def expand(self, node: Item) -> list[NewItem]:
        return [
            NewItem(
                id=stable_id(node.id, "reply"),
                kind="reply",
                parent_id=node.id,
                root=node.root,
                seq=0,
                data=dict(node.data),
            )
        ]


class ReplyStage:
    """The teacher's reply to a follow-up, asked with the answer's system prompt and the whole
    conversation. ``parent``: the follow-up; ``node.context``: the turn before it (answer or
    reply). Its result is the conversation so far, shaped as a row; the last turn's is a row."""

    item_kind: ClassVar[str] = "reply"
    name: ClassVar[str] = "reply"
    output: ClassVar[bool] = True  # its items can be rows: the last turn's are

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        self.system = self.prompts.render("answer_system", language=config.language)

    def _conversation(self, node: Item, parent: Item) -> list[Message]:
        assert node.context is not None, f"reply {node.id} has no turn before it"
        followup = parent.result["question"]
        return [*node.context.result["messages"], {"role": "user", "content": followup}]

    def request(self, node: Item, parent: Item) -> ChatRequest:
        messages = self._conversation(node, parent)
        return request_for(self.config, self.settings, node, system(self.system), *messages)

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        before = node.context
        assert before is not None
        reply = await teacher.text(self.request(node, parent))
        meta = dict(before.result["meta"])
        turns = int(node.data["turn"])
        meta.update(
            prompt_version=self.prompts.conversation_version,
            truncated=bool(meta.get("truncated"))
            or reply.truncated
            or parent.result["finish_reason"] == "length",
            turns=turns,
            followup_kinds=[*(meta.get("followup_kinds") or []), parent.result["kind"]],
        )
        return {
            "id": node.id,
            "messages": [
                *self._conversation(node, parent),
                {"role": "assistant", "content": reply.text.strip()},
            ],
            "meta": {key: meta.get(key) for key in META_KEYS},
        }

    def expand(self, node: Item) -> list[NewItem]:
        number = int(node.data["turn"])
        if number >= self.config.turns:
            return []
        return [next_followup(node, node.data["question_id"], number + 1)]


def session_numbers(syllabus: list[dict[str, Any]], titles: list[str]) -> list[int]:
    """The 1-based numbers of the question's sessions, found by title in the syllabus (a row
    keeps the titles only), in the question's order."""
    numbers: list[int] = []
    for title in titles:
        number = next(
            (
                i + 1
                for i, session in enumerate(syllabus)
                if session["title"] == title and i + 1 not in numbers
            ),
            None,
        )
        if number is not None:
            numbers.append(number)
    return numbers or [1]
