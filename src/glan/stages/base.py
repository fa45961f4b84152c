"""What a stage is, and what it may ask of the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from glan.config import GenerateConfig, StageSettings
from glan.ids import stable_int
from glan.items import Item, NewItem
from glan.llm.types import ChatRequest, ChatResponse, Message

M = TypeVar("M", bound=BaseModel)


class Teacher(Protocol):
    """The engine's side: cached, committed, retried calls. A stage never sees HTTP or SQL."""

    async def text(self, request: ChatRequest) -> ChatResponse:
        """A reply with some text in it (empty replies are asked again)."""
        ...

    async def json(self, request: ChatRequest, schema: type[M]) -> M:
        """A reply validated against ``schema`` (invalid JSON gets bounded repair turns)."""
        ...


class Stage(Protocol):
    """One level of the tree: ``request`` builds a node's (first) request, ``run`` does its
    calls, ``expand`` derives its children. The engine runs ``run``; ``glan estimate`` prices
    ``request``: both see the same prompt."""

    item_kind: ClassVar[str]  # the kind of item it works on: the syllabus stage works on subjects
    name: ClassVar[str]  # the config section and progress label
    output: ClassVar[bool]  # its results can be rows of the dataset (``Workflow.is_row``: which)

    def request(self, node: Item, parent: Item) -> ChatRequest: ...

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any: ...

    def expand(self, node: Item) -> list[NewItem]: ...


class Workflow(Protocol):
    """What an engine runs: the stages by the item kind each works on, and how the tree grows.
    GLAN's pipeline is one; the taxonomy build's levels are another."""

    stages: dict[str, Stage]  # shallowest first
    upstream: tuple[str, ...]  # kinds that keep a share of the slots: they feed the wide ones
    regrow: tuple[str, ...]  # kinds whose children change with ``expansion_signature``
    # (sibling kind or kinds, parent kind): when every sibling of a parent is done, ``merge``
    # makes the parent's next children from all of them (GLAN: subjects from every subject
    # query; GLAN-Test: the judgements from both candidates' answers)
    gathered: tuple[str | tuple[str, ...], str] | None
    signature_key: str  # the store's meta key that keeps the last ``expansion_signature``

    def children(self, node: Item) -> list[NewItem]: ...

    def merge(self, parent: Item, siblings: list[Item]) -> list[NewItem]: ...

    def expansion_signature(self) -> str: ...

    def context(self, node: Item, get: Callable[[str], Item]) -> Item | None:
        """The item besides its parent that ``node``'s stage reads (``get`` looks items up by
        id); the engine hands it over as ``node.context``. GLAN: a conversation's follow-up
        reads the syllabus of its subject."""
        ...

    def is_row(self, node: Item) -> bool:
        """Whether the finished ``node`` is a row of the dataset."""
        ...


class FlatWorkflow:
    """A workflow whose items are all planted up front: nothing grows from a finished item, and
    nothing is a row of the dataset (the taxonomy build's levels, the review, GLAN-Test)."""

    upstream: tuple[str, ...] = ()
    regrow: tuple[str, ...] = ()
    gathered: tuple[str | tuple[str, ...], str] | None = None

    def children(self, node: Item) -> list[NewItem]:
        return []

    def merge(self, parent: Item, siblings: list[Item]) -> list[NewItem]:
        return []

    def context(self, node: Item, get: Callable[[str], Item]) -> Item | None:
        return None

    def is_row(self, node: Item) -> bool:
        return False


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def system(content: str) -> Message:
    return {"role": "system", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def request_for(
    config: GenerateConfig,
    settings: StageSettings,
    node: Item,
    *messages: Message,
    tag: str = "",
) -> ChatRequest:
    """A request with the stage's model and sampling, and a seed derived from the node's id."""
    assert settings.model is not None
    return ChatRequest(
        model=settings.model,
        messages=messages,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=stable_int(config.seed, node.id, bits=31) if config.send_seed else None,
        tag=tag,
    )


async def draft_then_json(
    teacher: Teacher, ask: ChatRequest, convert: str, schema: type[M], single_turn: bool
) -> M:
    """The paper's two turns: free text, then ``convert`` turns it into JSON (asking for JSON up
    front lowered quality). ``single_turn`` asks for the JSON at once."""
    if not single_turn:
        draft = await teacher.text(ask)
        ask = ask.followed_by(assistant(draft.text), user(convert))
    return await teacher.json(ask, schema)
