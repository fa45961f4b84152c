"""A spending cap (``--max-cost USD``): a run never sends a request that could take it past the cap.

Before a request is sent, its worst case is set aside: its prompt priced at the input rate and a
reply of its full ``max_tokens`` at the output rate. A request is sent only while what the run
directory has spent (every invocation so far, at the run's price table) plus the worst case of
every request in flight stays within the cap. One that does not fit waits for requests in flight
to come back (their real cost is almost always far below their worst case), and is refused when
nothing is in flight and it still does not fit: the engine then starts nothing new (but the
answers whose room is held, below), lets what is in flight finish and be stored, and the run
stops, within one request's worst case of the cap.
The items that were not finished stay pending, so a later run with a higher cap continues them.

A question is worth nothing without its answer: a question is asked only while the worst case of
its answer fits too, and that room stays held until the answer reserves its own (``sequels``; a
follow-up and its reply likewise). Without it, the questions of a first wave (or Ray's question
pool, running beside the answers') could spend the whole cap and leave not one pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from glan.config import ConfigError, GenerateConfig
from glan.costs.prices import PriceTable
from glan.items import Item
from glan.llm.batch.client import ORIGIN
from glan.llm.types import ChatRequest, ChatResponse
from glan.stages.base import assistant, user
from glan.stages.pipeline import Pipeline

# The reply a request without max_tokens is assumed to be able to reach, in tokens.
UNBOUNDED_REPLY = 16_384
# Characters (of the request as sent, JSON) per prompt token: fewer than the usual four, so that
# the worst case is not too low for languages that take more tokens per character.
CHARS_PER_TOKEN = 3


class CapReached(Exception):
    """A request does not fit under the cap: its item stays pending for a later run."""


Sequels = Mapping[str, tuple[str, float]]  # stage -> (the stage that answers it, its worst case)


class Budget:
    """The cap of one run, and what is spent and set aside against it (one event loop)."""

    def __init__(self, cap: float, spent: float = 0.0, sequels: Sequels | None = None) -> None:
        self.cap = cap
        self.sequels = dict(sequels or {})
        self._holds = {stage: hold for stage, (_, hold) in self.sequels.items()}
        self._releases = {answer: hold for answer, hold in self.sequels.values()}
        self.spent = spent  # USD: the run directory's spend before this run, and this run's
        self.reserved = 0.0  # USD: the worst case of the requests in flight
        self.held = 0.0  # USD: room promised to requests that will follow those already sent
        self.in_flight = 0
        self.waiting = 0  # requests waiting for room under the cap
        self.exhausted = False  # a request was refused: the run stops starting new work
        self._changed: asyncio.Event | None = None

    def fits(self, amount: float) -> bool:
        return self.spent + self.reserved + self.held + amount <= self.cap * (1 + 1e-12)

    async def reserve(self, amount: float, stage: str | None = None) -> None:
        """Set ``amount`` aside for a request of ``stage``, once it fits; CapReached when it
        cannot. A stage with a sequel also holds the room of its answer; the answer takes that
        room back first. (A retried answer gives back a second hold, and a question that fails
        for good keeps its own: either can stop the run a little early, never past the cap.)"""
        if stage in self._releases:
            self.held = max(0.0, self.held - self._releases[stage])
        hold = self._holds.get(stage, 0.0) if stage is not None else 0.0
        while not self.fits(amount + hold):
            if self.in_flight == 0:
                self.exhausted = True
                raise CapReached(
                    f"the next request (up to ${amount:,.4f}) would take the run past its cap of"
                    f" ${self.cap:,.2f} (${self.spent:,.2f} spent)"
                )
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            self.waiting += 1
            try:
                await changed.wait()
            finally:
                self.waiting -= 1
        self.reserved += amount
        self.held += hold
        self.in_flight += 1

    def holds_room_for(self, stage: str) -> bool:
        """Whether room is held for requests of ``stage`` (answers to questions asked): they
        may still start when the cap has refused others."""
        return stage in self._releases and self.held > 0

    def settle(self, reserved: float, actual: float) -> None:
        """A request came back and cost ``actual`` (0 when it failed)."""
        self.reserved = max(0.0, self.reserved - reserved)
        self.in_flight -= 1
        if self.in_flight == 0:
            self.reserved = 0.0  # no drift from adding and subtracting floats
        self.spent += actual
        if self._changed is not None:  # wake the waiters: each checks again
            self._changed.set()
            self._changed = None


class Reserves(Protocol):
    """A budget as a client sees it: this process's ``Budget``, or a Ray job's shared one."""

    async def reserve(self, amount: float, stage: str | None = None) -> None: ...

    def holds_room_for(self, stage: str) -> bool:
        """Whether room is held for requests of ``stage`` (answers to questions asked): they
        may still start when the cap has refused others."""
        return stage in self._releases and self.held > 0

    def settle(self, reserved: float, actual: float) -> None: ...


class Client(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...


class CappedClient:
    """A client whose requests are sent only within the budget (``batch``: a batch API's
    client, whose requests are priced at the batch rate)."""

    def __init__(
        self, client: Client, budget: Reserves, prices: PriceTable, *, batch: bool = False
    ) -> None:
        self.client = client
        self.budget = budget
        self.prices = prices
        self.batch = batch

    async def complete(self, request: ChatRequest) -> ChatResponse:
        worst = worst_case(self.prices, request, batch=self.batch)
        origin = ORIGIN.get()  # the stage asking: the engine sets it for each item
        await self.budget.reserve(worst, origin[0] if origin is not None else None)
        actual = 0.0
        try:
            response = await self.client.complete(request)
            actual = (
                self.prices.cost(
                    request.model,
                    response.prompt_tokens,
                    response.completion_tokens,
                    response.batch,
                    response.cached_tokens,
                )
                or 0.0
            )
        finally:
            self.budget.settle(worst, actual)
        return response


def worst_case(prices: PriceTable, request: ChatRequest, *, batch: bool = False) -> float:
    """The most ``request`` can cost: its prompt uncached, and a reply of ``max_tokens``."""
    price = prices.price(request.model)
    if price is None:  # require_prices keeps such a model from a capped run
        raise ConfigError(f"{request.model} is not in the price table")
    prompt = len(request.wire) // CHARS_PER_TOKEN + 1
    reply = request.max_tokens or UNBOUNDED_REPLY
    usd = (prompt * price.input + reply * price.output) / 1e6
    return usd * prices.batch_discount if batch else usd


def sequels(config: GenerateConfig, prices: PriceTable) -> Sequels:
    """What each asking stage must leave room for: a question its answer, and with ``--turns``
    above 1 a follow-up its reply, each at its worst case: its prompt holding the longest texts
    the stages before can write (four characters a token; a reply, the whole conversation of
    the last turn) and its reply a full one."""
    stages = Pipeline(config).stages

    def longest(stage: str) -> str:
        return "x" * (4 * (config.stage(stage).max_tokens or UNBOUNDED_REPLY))

    question = Item("q", "question", None, "", 0, {}, result={"question": longest("question")})
    answer = stages["answer"].request(Item("a", "answer", "q", "", 0, {}), question)
    found = {"question": ("answer", worst_case(prices, answer))}
    if config.turns > 1:
        conversation = [user(longest("question")), assistant(longest("answer"))]
        for _ in range(config.turns - 2):
            conversation += [user(longest("followup")), assistant(longest("reply"))]
        before = Item("t", "reply", None, "", 0, {}, result={"messages": conversation})
        followup = Item("f", "followup", None, "", 0, {}, result={"question": longest("followup")})
        reply = Item("r", "reply", "f", "", 0, {}, context=before)
        found["followup"] = ("reply", worst_case(prices, stages["reply"].request(reply, followup)))
    return found


def require_prices(models: dict[str, str], prices: PriceTable) -> None:
    """A cap needs a price for every model the run uses (stage -> model)."""
    missing = sorted({model for model in models.values() if prices.price(model) is None})
    if missing:
        raise ConfigError(
            f"--max-cost needs the price of every model the run uses, and the price table has"
            f" none for {', '.join(missing)}: add {'it' if len(missing) == 1 else 'them'} to a"
            " copy of the table (at 0 for a self-hosted model) and pass it with --prices FILE"
        )
