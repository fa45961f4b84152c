"""Answer verification by self-consistency: more answers to the same question, the final answer
of each (and of the pair's own) extracted as structured output, and how many agree.

A ``verification`` item holds one row; its children are ``verify_sample`` items: sample 0 reads
the pair's own answer, samples 1..N answer the question again (the answer stage's prompt, a seed
of their own) and then say their final answer in a second turn. Questions with no single final
answer (an essay, an explanation) are marked as such and not scored.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from glan.config import GenerateConfig
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import prompts_for
from glan.stages.base import Teacher, assistant, request_for, system, user


class FinalAnswer(BaseModel):
    single: bool = Field(description="the question has one final answer")
    final_answer: str = Field(description="that answer in as few words as possible, else ''")


class SampleStage:
    item_kind: ClassVar[str] = "verify_sample"
    name: ClassVar[str] = "verify"
    output: ClassVar[bool] = False
    schema: ClassVar[type[BaseModel]] = FinalAnswer

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        self.system = self.prompts.render("answer_system", language=config.language)
        self.convert = self.prompts.render("verify_final")

    def request(self, node: Item, parent: Item) -> ChatRequest:
        """Sample 0: the final answer of the pair's own reply; the others: a new answer."""
        question, answer = _pair(parent.data["messages"])
        if node.data["index"] == 0:
            turns = (system(self.system), user(question), assistant(answer), user(self.convert))
            return request_for(self.config, self.settings, node, *turns)
        return request_for(self.config, self.settings, node, system(self.system), user(question))

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        ask = self.request(node, parent)
        reply = None
        if node.data["index"] > 0:
            reply = (await teacher.text(ask)).text.strip()
            ask = ask.followed_by(assistant(reply), user(self.convert))
        final = await teacher.json(ask, FinalAnswer)
        return {"answer": reply, **final.model_dump()}

    def expand(self, node: Item) -> list[NewItem]:
        return []


@dataclass(frozen=True)
class Agreement:
    single: bool  # the pair's own answer has one final answer (else nothing is scored)
    agree: int  # samples whose final answer is the pair's
    of: int  # samples
    majority: str | None  # the most common final answer of the samples
    majority_answer: str | None  # a sample's whole answer with that final answer

    @property
    def share(self) -> float | None:
        return self.agree / self.of if self.single and self.of else None

    @property
    def contradicted(self) -> bool:
        """A majority of the samples give another final answer."""
        return self.single and self.of > 0 and self.agree * 2 < self.of


def agreement(samples: list[dict[str, Any]]) -> Agreement | None:
    """The agreement of a row's finished samples (index 0 first), None without sample 0."""
    if not samples or samples[0]["index"] != 0:
        return None
    own = samples[0]
    others = [s for s in samples[1:] if s.get("single")]
    if not own.get("single"):
        return Agreement(False, 0, len(samples) - 1, None, None)
    finals = [same_answer_key(s["final_answer"]) for s in others]
    counts = Counter(f for f in finals if f)
    majority = counts.most_common(1)[0][0] if counts else None
    majority_answer = next(
        (s["answer"] for s, f in zip(others, finals, strict=True) if f == majority), None
    )
    mine = same_answer_key(own["final_answer"])
    agree = sum(1 for f in finals if f and f == mine)
    return Agreement(True, agree, len(samples) - 1, majority, majority_answer)


def same_answer_key(text: str) -> str:
    """A final answer reduced to what two equal answers share: case, spacing, punctuation and
    the form of a number (0.50, .5 and 1/2 are not merged; 0.50 and 0.5 are)."""
    text = unicodedata.normalize("NFKC", text or "").casefold().strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d+\.\d+|\d+", lambda m: _number(m.group(0)), text)
    return " ".join(re.sub(r"[^\w.%/+-]+", " ", text).split()).strip(" .")


def _number(digits: str) -> str:
    value = float(digits)
    return str(int(value)) if value.is_integer() else repr(value)


def _pair(messages: list[dict[str, Any]]) -> tuple[str, str]:
    question = next((m["content"] for m in messages if m.get("role") == "user"), "")
    answer = next((m["content"] for m in messages if m.get("role") == "assistant"), "")
    return question, answer
