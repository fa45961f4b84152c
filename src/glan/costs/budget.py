"""A spending cap (``--max-cost USD``): a run never sends a request that could take it past the cap.

Before a request is sent, its worst case is set aside: its prompt priced at the input rate and a
reply of its full ``max_tokens`` at the output rate. A request is sent only while what the run
directory has spent (every invocation so far, at the run's price table) plus the worst case of
every request in flight stays within the cap. One that does not fit waits for requests in flight
to come back (their real cost is almost always far below their worst case), and is refused when
nothing is in flight and it still does not fit: the engine then starts nothing new, lets what is
in flight finish and be stored, and the run stops, within one request's worst case of the cap.
The items that were not finished stay pending, so a later run with a higher cap continues them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from glan.config import ConfigError
from glan.costs.prices import PriceTable
from glan.llm.types import ChatRequest, ChatResponse

# The reply a request without max_tokens is assumed to be able to reach, in tokens.
UNBOUNDED_REPLY = 16_384
# Characters (of the request as sent, JSON) per prompt token: fewer than the usual four, so that
# the worst case is not too low for languages that take more tokens per character.
CHARS_PER_TOKEN = 3


class CapReached(Exception):
    """A request does not fit under the cap: its item stays pending for a later run."""


class Budget:
    """The cap of one run, and what is spent and set aside against it (one event loop)."""

    def __init__(self, cap: float, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent  # USD: the run directory's spend before this run, and this run's
        self.reserved = 0.0  # USD: the worst case of the requests in flight
        self.held = 0.0  # USD: room promised to requests that will follow those already sent
        self.in_flight = 0
        self.waiting = 0  # requests waiting for room under the cap
        self.exhausted = False  # a request was refused: the run stops starting new work
        self._changed: asyncio.Event | None = None

    def fits(self, amount: float) -> bool:
        return self.spent + self.reserved + self.held + amount <= self.cap * (1 + 1e-12)

    async def reserve(self, amount: float, hold: float = 0.0) -> None:
        """Set ``amount`` aside for a request, once it fits; CapReached when it cannot.
        ``hold``: room kept, beyond the request, for the one that must follow it (until
        ``release``), so the cap never pays for work whose sequel it cannot afford."""
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

    def release(self, hold: float) -> None:
        """The request a hold was kept for is about to reserve its own room."""
        self.held = max(0.0, self.held - hold)

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

    async def reserve(self, amount: float) -> None: ...

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
        await self.budget.reserve(worst)
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


def require_prices(models: dict[str, str], prices: PriceTable) -> None:
    """A cap needs a price for every model the run uses (stage -> model)."""
    missing = sorted({model for model in models.values() if prices.price(model) is None})
    if missing:
        raise ConfigError(
            f"--max-cost needs the price of every model the run uses, and the price table has"
            f" none for {', '.join(missing)}: add {'it' if len(missing) == 1 else 'them'} to a"
            " copy of the table (at 0 for a self-hosted model) and pass it with --prices FILE"
        )
