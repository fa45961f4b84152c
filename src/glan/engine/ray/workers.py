"""What runs inside the Ray cluster: the meter actor, the wide stages' workers, the spec sampler.

Nothing here decides what to ask: each worker runs a ``Stage`` of ``glan.stages.pipeline`` through a
``StoredTeacher``, exactly as the local engine does; only where replies are kept (a
``CallJournal``) and whose limiter is asked (the one ``Meter``) differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from glan.config import GenerateConfig
from glan.costs.budget import Budget, CappedClient, CapReached
from glan.costs.prices import PriceTable
from glan.costs.progress import RunStats, StageStats
from glan.engine.attempt import attempt
from glan.engine.ray.journal import CallJournal
from glan.engine.teacher import StoredTeacher
from glan.items import Item, NewItem
from glan.llm.batch.client import ORIGIN
from glan.llm.client import OpenAIClient
from glan.llm.errors import FatalLLMError
from glan.llm.limits import RateLimiter
from glan.llm.types import ChatResponse
from glan.prompts import prompts_for
from glan.run.parts import RunFilesError, RunLocation, node_key, row_schema
from glan.run.ray_parts import contains
from glan.stages.pipeline import Pipeline

# Between the wide stages an item travels as its node and its parent, both JSON.
ITEM_SCHEMA = pa.schema([("node", pa.string()), ("parent", pa.string())])


def dump_node(node: Item | NewItem) -> str:
    return orjson.dumps(dataclasses.asdict(node)).decode()


def load_node(text: str, attempts: Mapping[str, int]) -> Item:
    """A node, with how often earlier runs failed it (its teacher then asks anew)."""
    node = Item(**orjson.loads(text))
    failed = attempts.get(node.id)
    return dataclasses.replace(node, attempts=failed) if failed else node


class Meter:
    """One actor per job: the cluster's rate limiter of each model (so the workers together keep
    to --rpm/--tpm) and the running totals the driver shows."""

    def __init__(
        self,
        limits: Mapping[str, tuple[float | None, float | None]],
        prices: PriceTable,
        budget: Budget | None = None,
    ) -> None:
        """``budget``: the run's cap, as it stood when the wide stages started; every worker's
        requests reserve against this one budget."""
        self.limits = dict(limits)
        self.limiters: dict[str, RateLimiter] = {}
        self.stats = RunStats(prices=prices)
        self.reason: tuple[str, str] | None = None
        self.budget = budget

    def _limiter(self, model: str) -> RateLimiter:
        limiter = self.limiters.get(model)
        if limiter is None:
            limiter = self.limiters[model] = RateLimiter.for_model(self.limits, model)
        return limiter

    async def acquire(self, model: str, tokens: int) -> None:
        await self._limiter(model).acquire(tokens)

    def settle(self, model: str, estimated: int, actual: int) -> None:
        self._limiter(model).settle(estimated, actual)

    def pause(self, model: str, seconds: float) -> None:
        self._limiter(model).pause(seconds)

    def learn(self, model: str, headers: dict[str, str]) -> None:
        self._limiter(model).learn(headers)

    def finished(
        self,
        stage: str,
        done: int,
        failed: int,
        usage: list[tuple[str, str, bool, int, int, int, int]],
    ) -> None:
        """A worker's batch: items done and failed, and the replies paid for on the way."""
        self.stats.stages[stage].done += done
        self.stats.stages[stage].failed += failed
        for name, model, batch, calls, tokens_in, tokens_out, cached in usage:
            self.stats.add_usage(name, model, tokens_in, tokens_out, batch, calls, cached)

    def snapshot(self) -> dict[str, StageStats]:
        return self.stats.stages

    async def reserve_spend(self, amount: float, stage: str | None) -> bool:
        """Room for a request of ``stage`` under the cap: False when it was refused (the run
        stops)."""
        assert self.budget is not None
        try:
            await self.budget.reserve(amount, stage)
        except CapReached:
            return False
        return True

    def settle_spend(self, reserved: float, actual: float) -> None:
        assert self.budget is not None
        self.budget.settle(reserved, actual)

    def capped(self) -> bool:
        return self.budget is not None and self.budget.exhausted

    def stopping(self, kind: str, message: str) -> None:
        """A worker stops the job with an error the user must fix (the first one is kept)."""
        self.reason = self.reason or (kind, message)

    def stop_reason(self) -> tuple[str, str] | None:
        return self.reason


class SharedLimiter:
    """A worker's stand-in for the meter's limiter of one model. It asks the meter only once the
    model has a limit (configured, or learnt from the provider's headers by any reply), so an
    unlimited model costs no round trip; only ``acquire`` waits for an answer."""

    def __init__(self, meter: Any, model: str, limited: bool) -> None:
        self.meter = meter
        self.model = model
        self.limited = limited

    async def acquire(self, tokens: int) -> None:
        if self.limited:
            await self.meter.acquire.remote(self.model, tokens)

    def settle(self, estimated: int, actual: int) -> None:
        if self.limited and actual != estimated:
            self.meter.settle.remote(self.model, estimated, actual)

    def pause(self, seconds: float) -> None:
        self.limited = True  # a 429: from now on everyone's requests go through the meter
        self.meter.pause.remote(self.model, seconds)

    def learn(self, headers: Mapping[str, str]) -> None:
        limits = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}
        if limits:
            self.limited = True
            self.meter.learn.remote(self.model, limits)


class SharedBudget:
    """A worker's stand-in for the meter's budget: every request of the job reserves its worst
    case there, so the workers together keep to the run's --max-cost."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter

    async def reserve(self, amount: float, stage: str | None = None) -> None:
        if not await self.meter.reserve_spend.remote(amount, stage):
            raise CapReached("the next request would take the run past its cap")

    def settle(self, reserved: float, actual: float) -> None:
        self.meter.settle_spend.remote(reserved, actual)


class _Capped:
    """What ``StageWorker._one`` gives for an item its cap left for a later run."""


CAPPED = _Capped()


class _Usage:
    """Tokens by (stage, model, batch), gathered over a batch and sent to the meter in one go."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, bool], list[int]] = {}

    def record(self, stage: str, model: str, response: ChatResponse) -> None:
        entry = self.counts.setdefault((stage, model, response.batch), [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += response.prompt_tokens
        entry[2] += response.completion_tokens
        entry[3] += response.cached_tokens

    def take(self) -> list[tuple[str, str, bool, int, int, int, int]]:
        counts, self.counts = self.counts, {}
        return [
            (stage, model, batch, calls, tokens_in, tokens_out, cached)
            for (stage, model, batch), (calls, tokens_in, tokens_out, cached) in counts.items()
        ]


def expand_specs(batch: pa.Table, config: GenerateConfig, done: np.ndarray) -> pa.Table:
    """Finished syllabi -> their question items, less the questions whose pair is written."""
    pipeline = Pipeline(config)
    items = []
    for text in batch.column("node").to_pylist():
        questions = pipeline.children(load_node(text, {}))
        written = contains(done, np.fromiter((node_key(q.id) for q in questions), np.uint64))
        items += [
            {"node": dump_node(question), "parent": text}
            for question, skip in zip(questions, written, strict=True)
            if not skip
        ]
    return pa.Table.from_pylist(items, schema=ITEM_SCHEMA)


class StageWorker:
    """An actor of a wide stage's pool. Every item of a batch runs at once; the client holds the
    worker's share of --concurrency. Questions hand on their answer items, answers the rows."""

    def __init__(
        self,
        stage: str,
        config: GenerateConfig,
        base_url: str,
        api_key: str | None,
        run: str,
        stored: Mapping[str, ChatResponse],
        attempts: Mapping[str, int],
        meter: Any,
        concurrency: int,
        prices: PriceTable | None = None,
    ) -> None:
        """``prices``: the run's price table, for the worst case of each request when the run
        has a cap (``config.max_cost``)."""
        self.config = config.model_copy(update={"concurrency": concurrency})
        self.prices = prices or PriceTable.load(config.prices)
        self.stage = Pipeline(config).stages[stage]
        self.schema = row_schema() if self.stage.output else ITEM_SCHEMA
        self.endpoint = (base_url, api_key)
        self.attempts = attempts
        self.meter = meter
        self.usage = _Usage()
        limits = config.limits()
        self.limited = {model for model in limits if model != "*"}
        self.limit_all = "*" in limits
        self.prompts = prompts_for(config.prompts_dir)
        self.journal = CallJournal(RunLocation.of(run), stored, config.ray.journal_seconds)
        self.client: OpenAIClient | None = None
        self.asking: Any = None  # the client, within the cap when the run has one
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.client is None:  # aiohttp wants the actor's running loop
            self.loop = asyncio.get_running_loop()
            self.client = OpenAIClient.for_settings(
                self.config,
                *self.endpoint,
                limiter_for=self._limiter,
            )
            await self.client.__aenter__()
            self.asking = self.client
            if self.config.max_cost is not None:
                self.asking = CappedClient(self.client, SharedBudget(self.meter), self.prices)
            self.journal.start()
        try:
            outputs = await asyncio.gather(
                *(self._one(text, parent) for text, parent in _items(batch))
            )
            self.journal.flush()  # the batch's rows go on only with their replies written
        except BaseException as error:
            with contextlib.suppress(RunFilesError):
                self.journal.flush()  # keep what was paid for, whatever stops the job
            if isinstance(error, FatalLLMError | RunFilesError):
                await self.meter.stopping.remote(type(error).__name__, str(error))
            raise
        rows = [row for output in outputs if isinstance(output, list) for row in output]
        failed = outputs.count(None)
        capped = sum(1 for output in outputs if output is CAPPED)
        self.meter.finished.remote(
            self.stage.name, len(outputs) - failed - capped, failed, self.usage.take()
        )
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _limiter(self, model: str) -> SharedLimiter:
        return SharedLimiter(self.meter, model, self.limit_all or model in self.limited)

    async def _one(self, text: str, parent_text: str) -> list[dict[str, Any]] | _Capped | None:
        """The rows this item hands on; None when it failed (recorded in the journal), CAPPED
        when the run's cap left it for a later run (nothing recorded: it is asked then)."""
        assert self.asking is not None
        node = load_node(text, self.attempts)
        ORIGIN.set((self.stage.name, node.id))  # who asks: the cap holds a question's answer room
        teacher = StoredTeacher(
            self.journal,
            self.asking,
            self.usage,
            node,
            self.stage.name,
            self.config.repair_attempts,
            self.prompts,
        )
        try:
            outcome = await attempt(self.stage, node, load_node(parent_text, {}), teacher)
        except CapReached:
            return CAPPED
        if outcome.error is not None:
            self.journal.fail(node, outcome.error)
            return None
        if self.stage.output:
            return [outcome.result]
        done = node.done(outcome.result)
        parent = dump_node(done)
        return [{"node": dump_node(child), "parent": parent} for child in self.stage.expand(done)]

    def __del__(self) -> None:
        # Ray Data calls this when the pool shuts down after the last batch, outside the loop
        # the batches ran in (which still runs, in its own thread).
        with contextlib.suppress(RunFilesError):
            self.journal.flush()
        if self.client is not None and self.loop is not None and self.loop.is_running():
            closing = asyncio.run_coroutine_threadsafe(self.client.__aexit__(), self.loop)
            with contextlib.suppress(Exception):
                closing.result(timeout=5)


def _items(batch: pa.Table) -> zip[tuple[str, str]]:
    return zip(batch.column("node").to_pylist(), batch.column("parent").to_pylist(), strict=True)
