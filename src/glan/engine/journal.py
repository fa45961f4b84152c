"""A Ray worker's record of what it was paid for and what failed, as Parquet parts of the run.

Parts are written every few seconds, not per reply: one small file per reply would swamp a shared
filesystem or an object store. A worker hands a batch of rows on only after ``flushed()``, so a
row is never written before the replies it was made from; a worker killed in between loses the
replies of its last few seconds, which the next run asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

from glan.llm.types import ChatRequest, ChatResponse
from glan.runfiles import CALLS, FAILED, PartWriter, RunLocation, call_schema, failure_schema
from glan.store import Node, call_record


class CallJournal:
    """The ``Replies`` of a Ray worker's ``StoredTeacher``."""

    def __init__(
        self, location: RunLocation, stored: Mapping[str, ChatResponse], every: float
    ) -> None:
        self.stored = stored  # replies of earlier runs for items not finished yet, by request key
        self.every = every
        self.calls = PartWriter(location, CALLS, call_schema())
        self.failures = PartWriter(location, FAILED, failure_schema())
        self._waiters: list[asyncio.Future[None]] = []
        self._ticker: asyncio.Task[None] | None = None

    def cached_call(self, key: str) -> ChatResponse | None:
        return self.stored.get(key)

    def save_call(
        self, request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
    ) -> None:
        self.calls.add(call_record(request, response, node_id=node_id, stage=stage))

    async def durable(self) -> None:
        """Returns at once: a worker waits for ``flushed()`` once per batch instead."""

    def fail(self, node: Node, error: str) -> None:
        self.failures.add(
            {
                "id": node.id,
                "kind": node.kind,
                "root": node.root,
                "error": error,
                "failed_at": time.time(),
            }
        )

    async def flushed(self) -> None:
        """Wait until everything recorded so far is written."""
        if not len(self.calls) and not len(self.failures):
            return
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            with contextlib.suppress(Exception):  # the waiters carry it to their batches
                self.flush()

    def flush(self) -> None:
        waiters, self._waiters = self._waiters, []
        try:
            self.calls.flush()
            self.failures.flush()
        except Exception as error:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
