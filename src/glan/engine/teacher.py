"""The engine's ``Teacher``: each call looked up in the store first, committed before use."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from glan.items import Item
from glan.llm.errors import ParseError
from glan.llm.structured import json_schema_of, parse_reply
from glan.llm.types import ChatRequest, ChatResponse
from glan.prompts import Prompts, prompts_for
from glan.stages.base import assistant, user

M = TypeVar("M", bound=BaseModel)


class Client(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...


class Replies(Protocol):
    """Where paid-for replies are kept: the run's store, or a Ray worker's call journal."""

    def cached_call(self, key: str) -> ChatResponse | None: ...

    def save_call(
        self, request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
    ) -> None: ...

    async def durable(self) -> None: ...


class Usage(Protocol):
    def record(self, stage: str, model: str, response: ChatResponse) -> None: ...


class StoredTeacher:
    """Asks on behalf of one node.

    Unusable replies (empty text, JSON that will not validate) are paid for and kept, so a retry
    must ask something new: a repair turn for JSON, or the same request under a new tag. Each
    earlier failed attempt of the node adds one round of tries, so a node retried by a later run
    re-reads its old replies from the store for free and then asks new ones.
    """

    def __init__(
        self,
        store: Replies,
        client: Client,
        usage: Usage,
        node: Item,
        stage: str,
        repair_attempts: int,
        prompts: Prompts | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        self.store = store
        self.client = client
        self.usage = usage
        self.node = node
        self.stage = stage
        self.prompts = prompts or prompts_for(None)
        self.tries_per_round = repair_attempts + 1
        self.tries = (node.attempts + 1) * self.tries_per_round
        self.fresh = fresh  # created by this run: nothing of it can be stored yet

    async def ask(self, request: ChatRequest) -> ChatResponse:
        if not self.fresh:
            cached = self.store.cached_call(request.key)
            if cached is not None:
                return cached
        response = await self.client.complete(request)
        self.store.save_call(request, response, node_id=self.node.id, stage=self.stage)
        self.usage.record(self.stage, request.model, response)
        await self.store.durable()
        return response

    async def text(self, request: ChatRequest) -> ChatResponse:
        for attempt in range(self.tries):
            response = await self.ask(_retagged(request, attempt))
            if response.text.strip():
                return response
        raise ParseError(f"the teacher replied with empty text {self.tries} times")

    async def json(self, request: ChatRequest, schema: type[M]) -> M:
        first = request.with_schema(*_schema(schema))
        current = first
        problem = ParseError("no attempt made")
        for attempt in range(self.tries):
            response = await self.ask(current)
            try:
                return parse_reply(response.text, schema)
            except ParseError as error:
                problem = error
            if (attempt + 1) % self.tries_per_round == 0:
                current = _retagged(first, attempt + 1)  # a fresh sample, not another repair
            else:
                current = current.followed_by(
                    assistant(response.text),
                    user(self.prompts.render("repair", problem=str(problem))),
                )
        raise ParseError(f"{problem} (after {self.tries} tries)")


def _retagged(request: ChatRequest, attempt: int) -> ChatRequest:
    if attempt == 0:
        return request
    seed = None if request.seed is None else (request.seed + attempt) % 2**31
    return replace(request, tag=f"{request.tag}#retry{attempt}", seed=seed)


@cache
def _schema(schema: type[BaseModel]) -> tuple[dict[str, Any], str]:
    return json_schema_of(schema), schema.__name__
