"""Provider batch APIs (OpenAI, Azure OpenAI) behind the online client's face.

``BatchClient.complete(request)`` does what ``OpenAIClient.complete`` does, at the batch price and
with hours instead of seconds of latency: the request joins a queue (one per model: a provider
batch takes a single model); the queue becomes a batch when it reaches the provider's limits
(requests, bytes) or when no request came for ``flush_after`` seconds. A batch is a JSONL file
uploaded to ``/files``, then ``/batches``; it is polled until it ends, its output and error files
are downloaded and each line goes back to its caller by ``custom_id`` (the request's key). The
HTTP is ``http.BatchAPI``'s; what is kept, and where, is the ``records.BatchRecords`` passed in.

Paid-for work is never lost nor bought twice:

- a batch's rows are committed before its file is uploaded, the file id as soon as it is known,
  the provider's batch id as soon as it is known; a kill between the upload and the creation
  wastes an upload, and the batch list tells whether the creation went through;
- a request whose key belongs to an open batch of the store joins that batch instead of a new one,
  so a process started after a kill polls the batches its predecessor paid for;
- every result is committed when its batch is collected, before it is handed out, so results
  nobody waits for yet (the engine has not reached their items) are kept for later;
- lines without output (an expired, cancelled or failed batch, a transient error) are resubmitted,
  and only those, a bounded number of times; a line the provider rejected fails its item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from glan.llm.batch.http import (
    FINAL,
    MAX_BYTES,
    MAX_REQUESTS,
    BatchAPI,
    BatchInfo,
    LineError,
    NotFound,
    azure_options,
)
from glan.llm.batch.records import BatchRecords, Collected, Origin
from glan.llm.client import RetryPolicy, StructuredMode
from glan.llm.errors import FatalLLMError, RequestFailed
from glan.llm.structured import schema_in_prompt
from glan.llm.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from glan.config import GenerateConfig

log = logging.getLogger(__name__)

_LIST_PAGES = 10  # pages of 100 batches searched for one whose creation was not recorded

# Who asks (stage, item id): the engine sets it per item, the batch rows keep it for diagnosis.
ORIGIN: ContextVar[Origin | None] = ContextVar("glan_batch_origin", default=None)


@dataclass(eq=False)
class _Waiting:
    """A request somebody awaits: queued, or in a batch."""

    request: ChatRequest
    line: bytes
    futures: list[asyncio.Future[ChatResponse]]
    origin: Origin | None
    batches: int = 0  # batches it was sent in (or found in) by this process


@dataclass
class _Queue:
    entries: list[_Waiting] = field(default_factory=list)
    size: int = 0
    last: float = 0.0  # loop time of the latest request


class BatchClient:
    """``async complete(request) -> ChatResponse`` through a provider batch API.

    Use it as ``async with BatchClient(...) as client``; many requests must be in flight at once
    for batches to fill (the local engine gives the batched stages their own, larger limit).
    ``azure`` and ``api_version`` choose the provider's spelling (see ``http.BatchAPI``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        records: BatchRecords,
        *,
        azure: bool = False,
        api_version: str | None = None,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
        poll_interval: float = 30.0,
        flush_after: float = 10.0,
        max_resubmits: int = 3,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        structured: StructuredMode = "auto",
    ) -> None:
        self.api = BatchAPI(
            base_url,
            api_key,
            azure=azure,
            api_version=api_version,
            timeout=timeout,
            retry=retry,
            file_poll_interval=min(poll_interval, 5.0),
        )
        self.records = records
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.poll_interval = poll_interval
        self.flush_after = flush_after
        self.max_resubmits = max_resubmits
        self.structured: StructuredMode = structured
        self._open = False
        self._waiting: dict[str, _Waiting] = {}
        self._queues: dict[str, _Queue] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._error: BaseException | None = None
        self.batches_created = 0

    @classmethod
    def for_config(
        cls, config: GenerateConfig, base_url: str, api_key: str | None, records: BatchRecords
    ) -> BatchClient:
        """The batch client of a ``glan generate --batch`` run."""
        azure, api_version = azure_options(base_url)
        return cls(
            base_url,
            api_key,
            records,
            azure=azure,
            api_version=api_version,
            max_requests=config.batch_max_requests,
            max_bytes=config.batch_max_bytes,
            poll_interval=config.batch_poll_interval,
            flush_after=config.batch_flush_after,
            timeout=config.timeout,
            retry=RetryPolicy(max_retries=config.max_retries, backoff_base=config.retry_backoff),
            structured=config.structured_output,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> BatchClient:
        await self.api.open()
        try:
            await self._recover()
        except BaseException:
            await self.api.close()
            raise
        self._open = True
        self._spawn(self._flush_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Batches in flight are not cancelled: they are paid for, and the next run collects them.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for waiting in self._waiting.values():
            for future in waiting.futures:
                future.cancel()
        self._waiting.clear()
        with contextlib.suppress(*self.records.errors):
            self.records.forget_saved()
        self._open = False
        await self.api.close()

    async def _recover(self) -> None:
        """Settle what a killed predecessor left between 'rows written' and 'batch created'."""
        lost = self.records.unconfirmed()
        # One listing either way: it tells at once whether the server has a batch API at all.
        listed = await self.api.recent(pages=_LIST_PAGES) if lost else []
        if not lost:
            await self.api.recent(pages=1, limit=1)
        by_file = {info.input_file_id: info for info in listed}
        for unconfirmed in lost:
            file_id = unconfirmed.input_file_id
            info = by_file.get(file_id) if file_id else None
            if info is not None:
                log.info("batch %s was created before the last run stopped", info.id)
                self._record_created(unconfirmed.batch, info)
                continue
            if file_id:
                log.warning(
                    "batch file %s was uploaded but no recent batch uses it; its requests are"
                    " sent again",
                    file_id,
                )
            self.records.abandon(unconfirmed.batch)
        self.records.forget_saved()

    # -- the contract -------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if not self._open:
            raise RuntimeError("use 'async with BatchClient(...)'")
        if self._error is not None:
            raise self._error
        key = request.key
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is not None:  # the same request asked twice at once: one line, two callers
            waiting.futures.append(future)
            return await future
        kept = self.records.kept_result(key)
        if kept is not None:
            return kept
        line = self._line(request)
        if len(line) > self.max_bytes:
            raise RequestFailed(
                f"the request is {len(line):,} bytes, more than a batch may hold"
                f" ({self.max_bytes:,})"
            )
        waiting = _Waiting(request, line, [future], ORIGIN.get())
        self._waiting[key] = waiting
        open_batch = self.records.open_batch_of(key)
        if open_batch is not None:
            waiting.batches = 1
            self._watch(*open_batch)
        else:
            self._enqueue(waiting)
        return await future

    def _line(self, request: ChatRequest) -> bytes:
        sent = request
        # A batch API is OpenAI's (or Azure's): json_schema, or the schema in the prompt.
        in_prompt = self.structured == "prompt"
        if request.schema is not None and in_prompt:
            sent = schema_in_prompt(request)
        return self.api.line(request.key, sent.body(response_format=not in_prompt))

    # -- queues and submission ----------------------------------------------------------------

    def _enqueue(self, waiting: _Waiting) -> None:
        model = waiting.request.model
        queue = self._queues.get(model)
        if queue is not None and queue.size + len(waiting.line) > self.max_bytes:
            self._submit(model)
            queue = None
        if queue is None:
            queue = self._queues[model] = _Queue()
        queue.entries.append(waiting)
        queue.size += len(waiting.line)
        queue.last = asyncio.get_running_loop().time()
        if len(queue.entries) >= self.max_requests:
            self._submit(model)
        else:
            self._wake.set()

    def _submit(self, model: str) -> None:
        entries = self._queues.pop(model).entries
        keys = [waiting.request.key for waiting in entries]
        self._spawn(self._run_batch(model, entries), lambda: keys)

    async def _flush_loop(self) -> None:
        """Send what waits once no new request came for ``flush_after`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queues:
                now = loop.time()
                for model, queue in list(self._queues.items()):
                    if now - queue.last >= self.flush_after:
                        self._submit(model)
                if self._queues:
                    due = min(queue.last for queue in self._queues.values()) + self.flush_after
                    await asyncio.sleep(max(0.0, due - loop.time()))

    async def _run_batch(self, model: str, entries: list[_Waiting]) -> None:
        for waiting in entries:
            waiting.batches += 1
        batch = self.records.new_batch(model, [(w.request.key, w.origin) for w in entries])
        content = b"".join(waiting.line for waiting in entries)
        file_id = await self.api.upload(content, f"glan-batch-{batch}.jsonl")
        self.records.uploaded(batch, file_id)
        info = await self.api.create(file_id, {"glan_batch": str(batch)})
        self._record_created(batch, info)
        self.batches_created += 1
        log.info("batch %s: %d %s requests submitted", info.id, len(entries), model)
        self._watch(batch, info.id)

    def _record_created(self, batch: int, info: BatchInfo) -> None:
        self.records.created(batch, info.id, info.status or "validating")

    # -- polling and collecting ---------------------------------------------------------------

    def _watch(self, batch: int, provider_id: str) -> None:
        if batch in self._watchers:
            return
        task = self._spawn(self._follow(batch, provider_id), lambda: self.records.keys(batch))
        self._watchers[batch] = task
        task.add_done_callback(lambda _: self._watchers.pop(batch, None))

    async def _follow(self, batch: int, provider_id: str) -> None:
        while True:
            try:
                info = await self.api.get(provider_id)
            except NotFound:
                log.warning(
                    "batch %s is unknown to %s (another account or key?); resubmitting its"
                    " requests",
                    provider_id,
                    self.api.base_url,
                )
                info = BatchInfo(provider_id, "lost")
                break
            except RequestFailed as error:  # the provider is having trouble: ask again later
                log.warning("polling batch %s failed (%s); trying again", provider_id, error)
                await asyncio.sleep(self.poll_interval)
                continue
            self.records.progress(batch, info.status, info.completed, info.failed)
            if info.status in FINAL:
                break
            await asyncio.sleep(self.poll_interval)
        await self._collect(batch, info)

    async def _collect(self, batch: int, info: BatchInfo) -> None:
        """Take a finished batch's results: keep them all, then hand them out."""
        results = self._sort(batch, info, await self.api.results(info))
        self.records.collected(batch, results)
        log.info(
            "batch %s %s: %d replies, %d failed, %d to resubmit",
            info.id,
            info.status,
            len(results.done),
            len(results.failed),
            len(results.again),
        )
        if results.again and info.status != "completed":
            log.warning(
                "batch %s %s with %d of %d requests unfinished; resubmitting those",
                info.id,
                info.status,
                len(results.again),
                len(results.done) + len(results.failed) + len(results.again),
            )
        self._hand_out(info.id, results)

    def _sort(
        self, batch: int, info: BatchInfo, outcomes: dict[str, ChatResponse | LineError]
    ) -> Collected:
        """Each request of the batch by what happens next: a reply, a failure, another batch."""
        latency = time.time() - self.records.submitted_at(batch)  # submission to collection
        done: list[tuple[str, ChatResponse]] = []
        failed: list[tuple[str, str]] = []
        again: dict[str, str] = {}
        for key in self.records.keys(batch):
            outcome = outcomes.get(key)
            if isinstance(outcome, ChatResponse):
                outcome.latency = latency
                done.append((key, outcome))
            elif isinstance(outcome, LineError) and not outcome.retryable:
                failed.append((key, outcome.message))
            else:
                again[key] = outcome.message if outcome else info.error or f"batch {info.status}"
        return Collected(
            info.status, info.output_file_id, info.error_file_id, info.error, done, failed, again
        )

    def _hand_out(self, provider_id: str, results: Collected) -> None:
        for key, response in results.done:
            self._deliver(key, response)
        for key, error in results.failed:
            self._deliver(key, RequestFailed(f"batch {provider_id}: {error}"))
        for key, reason in results.again.items():
            waiting = self._waiting.get(key)
            if waiting is None:
                continue  # nobody asks yet; when somebody does, it goes into a new batch
            if waiting.batches > self.max_resubmits:
                self._deliver(
                    key,
                    RequestFailed(f"no reply after {waiting.batches} batches (last: {reason})"),
                )
            else:
                self._enqueue(waiting)

    def _deliver(self, key: str, outcome: ChatResponse | BaseException) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return
        for future in waiting.futures:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _spawn(
        self, coroutine: Any, keys: Callable[[], Iterable[str]] | None = None
    ) -> asyncio.Task[None]:
        """A background task; if it fails, whoever waits on ``keys`` gets the error."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            error = task.exception()
            assert error is not None
            if isinstance(error, FatalLLMError):
                self._error = error
            elif not isinstance(error, (RequestFailed, *self.records.errors)):
                log.error("batch task failed", exc_info=error)
            for key in keys() if keys is not None else ():
                self._deliver(key, error)

        task.add_done_callback(done)
        return task
