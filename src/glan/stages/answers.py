"""An answer per question, in a separate call (paper: often a cheaper model, T=0.7, top-p 0.95).
A finished answer is a row of the dataset, with its whole lineage; in a conversation (``--turns``
above 1) it is the first turn, and the last turn's reply is the row."""

from __future__ import annotations

from typing import Any, ClassVar

from glan.config import GenerateConfig
from glan.items import FROM_QUESTION, Item, NewItem
from glan.llm.types import ChatRequest
from glan.prompts import prompts_for
from glan.stages.base import Teacher, request_for, system, user
from glan.stages.turns import next_followup


class AnswerStage:
    item_kind: ClassVar[str] = "answer"
    name: ClassVar[str] = "answer"
    output: ClassVar[bool] = True  # its items can be rows: with --turns 1 they are

    def __init__(self, config: GenerateConfig) -> None:
        self.config = config
        self.settings = config.stage(self.name)
        self.prompts = prompts_for(config.prompts_dir)
        # The same for every answer of the run: rendered once.
        self.system = self.prompts.render("answer_system", language=config.language)

    def request(self, node: Item, parent: Item) -> ChatRequest:
        question = parent.result["question"]
        return request_for(self.config, self.settings, node, system(self.system), user(question))

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        question = parent.result["question"]
        reply = await teacher.text(self.request(node, parent))
        meta = {key: parent.data.get(key) for key in FROM_QUESTION}
        meta.update(
            question_model=parent.result["model"],
            answer_model=reply.model or self.settings.model,
            prompt_version=self.prompts.version,
            seed=self.config.seed,
            language=self.config.language,
            syllabus_language=self.config.syllabus_language,
            question_id=parent.id,
            truncated=reply.truncated or parent.result["finish_reason"] == "length",
        )
        return {
            "id": node.id,
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": reply.text.strip()},
            ],
            "meta": meta,
        }

    def expand(self, node: Item) -> list[NewItem]:
        if self.config.turns <= 1:
            return []
        assert node.parent_id is not None
        return [next_followup(node, node.parent_id, 2)]
