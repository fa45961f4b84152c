"""A Ray worker's record of what it was paid for and what failed, as Parquet parts of the run.

Replies are written when a worker hands a batch on (so a pair is never written before the replies
it was made from) and every few seconds in between (so a killed worker loses only its last few
seconds), not one by one: a file per reply would swamp a shared filesystem or an object store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

from glan.items import Item
from glan.llm.types import ChatRequest, ChatResponse
from glan.run.calls import call_record
from glan.run.parts import (
    CALLS,
    FAILED,
    PartWriter,
    RunFilesError,
    RunLocation,
    call_schema,
    failure_schema,
)


class CallJournal:
    """The ``Replies`` of a Ray worker's ``StoredTeacher``."""

    def __init__(
        self, location: RunLocation, stored: Mapping[str, ChatResponse], every: float
    ) -> None:
        self.stored = stored  # replies of earlier runs for items not finished yet, by request key
        self.every = every
        self.calls = PartWriter(location, CALLS, call_schema())
        self.failures = PartWriter(location, FAILED, failure_schema())
        self._ticker: asyncio.Task[None] | None = None

    def cached_call(self, key: str) -> ChatResponse | None:
        return self.stored.get(key)

    def save_call(
        self, request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
    ) -> None:
        self.calls.add(call_record(request, response, node_id=node_id, stage=stage))

    async def durable(self) -> None:
        """Returns at once: the worker writes its replies per batch (``flush``) instead."""

    def fail(self, node: Item, error: str) -> None:
        self.failures.add(
            {
                "id": node.id,
                "kind": node.kind,
                "root": node.root,
                "error": error,
                "failed_at": time.time(),
            }
        )

    def start(self) -> None:
        """Write every ``every`` seconds from now on, in the running loop."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            with contextlib.suppress(RunFilesError):  # kept for the next write, which reports it
                self.flush()

    def flush(self) -> None:
        self.calls.flush()
        self.failures.flush()
