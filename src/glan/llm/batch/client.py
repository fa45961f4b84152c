"""Provider batch APIs (OpenAI, Azure OpenAI) behind the online client's face.

``BatchClient.complete(request)`` does what ``OpenAIClient.complete`` does, at the batch price and
with hours instead of seconds of latency: the request joins a queue (one per model: a provider
batch takes a single model); the queue becomes a batch when it reaches the provider's limits
(requests, bytes) or when no request came for ``flush_after`` seconds. A batch is a JSONL file
uploaded to ``/files``, then ``/batches``; it is polled until it ends, its output and error files
are downloaded and each line goes back to its caller by ``custom_id`` (the request's key).

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
import io
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from glan.llm.client import RetryPolicy, StructuredMode, error_message
from glan.llm.errors import FatalLLMError, RequestFailed
from glan.llm.structured import schema_in_prompt
from glan.llm.types import ChatRequest, ChatResponse
from glan.run.store import Store, StoreError

if TYPE_CHECKING:
    from glan.config import GenerateConfig

log = logging.getLogger(__name__)

# OpenAI's limits per batch (Azure OpenAI allows 100,000 requests, also 200 MB).
MAX_REQUESTS = 50_000
MAX_BYTES = 200_000_000
AZURE_API_VERSION = "2024-10-21"  # the data-plane API's GA version with batches
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
FINAL = frozenset({"completed", "expired", "cancelled", "failed"})
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Results the engine has saved as calls since; one lookup per kept result, not a scan of calls.
_FORGET_SAVED = (
    "DELETE FROM batch_results"
    " WHERE EXISTS (SELECT 1 FROM calls WHERE calls.key = batch_results.key)"
)
_LIST_PAGES = 10  # pages of 100 batches searched for one whose creation was not recorded

# Who asks (stage, item id): the engine sets it per item, the batch rows keep it for diagnosis.
ORIGIN: ContextVar[tuple[str, str] | None] = ContextVar("glan_batch_origin", default=None)

MIGRATIONS: list[str] = [
    """
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        status TEXT NOT NULL,  -- preparing, uploaded, the provider's, or abandoned (never created)
        input_file_id TEXT,
        provider_id TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        requests INTEGER NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        collected INTEGER NOT NULL DEFAULT 0,  -- results taken: nothing left to poll
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX batches_open ON batches (collected);
    CREATE TABLE batch_requests (
        key TEXT NOT NULL,
        batch INTEGER NOT NULL REFERENCES batches (id),
        stage TEXT,
        node_id TEXT,
        status TEXT NOT NULL DEFAULT 'waiting',  -- waiting, done, failed, resubmit
        error TEXT,
        PRIMARY KEY (key, batch)
    );
    CREATE INDEX batch_requests_batch ON batch_requests (batch);
    CREATE TABLE batch_results (
        key TEXT PRIMARY KEY,
        batch INTEGER NOT NULL,
        response TEXT NOT NULL
    );
    """,
]


class _NotFound(RequestFailed):
    """HTTP 404."""


class _Transient(Exception):
    """A try that may work if repeated: (what went wrong, Retry-After)."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


@dataclass(frozen=True)
class _LineError:
    message: str
    retryable: bool


@dataclass(eq=False)
class _Waiting:
    """A request somebody awaits: queued, or in a batch."""

    request: ChatRequest
    line: bytes
    futures: list[asyncio.Future[ChatResponse]]
    origin: tuple[str, str] | None
    batches: int = 0  # batches it was sent in (or found in) by this process


@dataclass
class _Queue:
    entries: list[_Waiting] = field(default_factory=list)
    size: int = 0
    last: float = 0.0  # loop time of the latest request


def azure_options(base_url: str) -> tuple[bool, str | None]:
    """(azure, api_version) for a base URL, recognising Azure OpenAI resources by their host.

    Azure's v1 API (``https://RESOURCE.openai.azure.com/openai/v1``) takes no api-version; the
    older data-plane API (``.../openai``) takes ``AZURE_API_VERSION``.
    """
    parts = urlsplit(base_url)
    if not (parts.hostname or "").endswith(AZURE_HOSTS):
        return False, None
    return True, None if parts.path.rstrip("/").endswith("/v1") else AZURE_API_VERSION


class BatchClient:
    """``async complete(request) -> ChatResponse`` through a provider batch API.

    Use it as ``async with BatchClient(...) as client``; many requests must be in flight at once
    for batches to fill (the local engine gives the batched stages their own, larger limit).
    ``azure=True`` speaks Azure OpenAI: an ``api-key`` header, ``api_version`` as the api-version
    query parameter (None for Azure's v1 API) and ``/chat/completions`` as each line's url, the
    deployment name being the model.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        store: Store,
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
        self.base_url = base_url.rstrip("/")
        self.store = store
        self.azure = azure
        self.endpoint = "/chat/completions" if azure else "/v1/chat/completions"
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.poll_interval = poll_interval
        self.flush_after = flush_after
        self.max_resubmits = max_resubmits
        self.retry = retry or RetryPolicy()
        self.structured: StructuredMode = structured
        self._params = {"api-version": api_version} if api_version else {}
        self._headers: dict[str, str] = {}
        if api_key:
            self._headers = (
                {"api-key": api_key} if azure else {"Authorization": f"Bearer {api_key}"}
            )
        # Files can be large: no limit on a whole transfer, only on silence.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._reached = False
        self._waiting: dict[str, _Waiting] = {}
        self._queues: dict[str, _Queue] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._error: BaseException | None = None
        self.batches_created = 0

    @classmethod
    def for_config(
        cls, config: GenerateConfig, base_url: str, api_key: str | None, store: Store
    ) -> BatchClient:
        """The batch client of a ``glan generate --batch`` run."""
        azure, api_version = azure_options(base_url)
        return cls(
            base_url,
            api_key,
            store,
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
        self.store.migrate("batches", MIGRATIONS)
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            await self._recover()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
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
        with contextlib.suppress(StoreError), self._tx() as tx:
            tx.execute(_FORGET_SAVED)  # kept results that are saved as calls by now
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _recover(self) -> None:
        """Settle what a killed predecessor left between 'rows written' and 'batch created'."""
        db = self.store.db
        lost = db.execute(
            "SELECT id, input_file_id FROM batches WHERE collected = 0 AND provider_id IS NULL"
        ).fetchall()
        # One listing either way: it tells at once whether the server has a batch API at all.
        listed = await self._list_batches(pages=_LIST_PAGES) if lost else []
        if not lost:
            await self._list_batches(pages=1, limit=1)
        by_file = {info.get("input_file_id"): info for info in listed}
        with self._tx() as tx:
            for batch_id, file_id in lost:
                info = by_file.get(file_id) if file_id else None
                if info is not None:
                    log.info("batch %s was created before the last run stopped", info["id"])
                    self._record_created(tx, batch_id, info)
                else:
                    if file_id:
                        log.warning(
                            "batch file %s was uploaded but no recent batch uses it; its"
                            " requests are sent again",
                            file_id,
                        )
                    tx.execute(
                        "UPDATE batches SET status = 'abandoned', collected = 1, updated_at = ?"
                        " WHERE id = ?",
                        (time.time(), batch_id),
                    )
                    tx.execute(
                        "UPDATE batch_requests SET status = 'resubmit' WHERE batch = ?",
                        (batch_id,),
                    )
            tx.execute(_FORGET_SAVED)

    # -- the contract -------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if self._session is None:
            raise RuntimeError("use 'async with BatchClient(...)'")
        if self._error is not None:
            raise self._error
        key = request.key
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is not None:  # the same request asked twice at once: one line, two callers
            waiting.futures.append(future)
            return await future
        stored = self._stored_result(key)
        if stored is not None:
            return stored
        line = self._line(request)
        if len(line) > self.max_bytes:
            raise RequestFailed(
                f"the request is {len(line):,} bytes, more than a batch may hold"
                f" ({self.max_bytes:,})"
            )
        waiting = _Waiting(request, line, [future], ORIGIN.get())
        self._waiting[key] = waiting
        open_batch = self._open_batch_of(key)
        if open_batch is not None:
            waiting.batches = 1
            self._watch(*open_batch)
        else:
            self._enqueue(waiting)
        return await future

    def _line(self, request: ChatRequest) -> bytes:
        sent = request
        if request.schema is not None and self.structured == "prompt":
            sent = schema_in_prompt(request)
        body = sent.body(response_format=self.structured != "prompt")
        line = {"custom_id": request.key, "method": "POST", "url": self.endpoint, "body": body}
        return orjson.dumps(line) + b"\n"

    def _stored_result(self, key: str) -> ChatResponse | None:
        row = self.store.db.execute(
            "SELECT response FROM batch_results WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _response(orjson.loads(row[0]))

    def _open_batch_of(self, key: str) -> tuple[int, str] | None:
        row = self.store.db.execute(
            "SELECT b.id, b.provider_id FROM batch_requests r JOIN batches b ON b.id = r.batch"
            " WHERE r.key = ? AND b.collected = 0 AND b.provider_id IS NOT NULL",
            (key,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

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
        now = time.time()
        with self._tx() as tx:
            batch_id = tx.execute(
                "INSERT INTO batches (model, status, requests, created_at, updated_at)"
                " VALUES (?, 'preparing', ?, ?, ?)",
                (model, len(entries), now, now),
            ).lastrowid
            assert batch_id is not None
            tx.executemany(
                "INSERT INTO batch_requests (key, batch, stage, node_id) VALUES (?, ?, ?, ?)",
                ((w.request.key, batch_id, *(w.origin or (None, None))) for w in entries),
            )
        content = b"".join(waiting.line for waiting in entries)
        file_id = await self._upload(batch_id, content)
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET status = 'uploaded', input_file_id = ?, updated_at = ?"
                " WHERE id = ?",
                (file_id, time.time(), batch_id),
            )
        info = await self._create(batch_id, file_id)
        with self._tx() as tx:
            self._record_created(tx, batch_id, info)
        self.batches_created += 1
        log.info("batch %s: %d %s requests submitted", info["id"], len(entries), model)
        self._watch(batch_id, info["id"])

    def _record_created(self, tx: sqlite3.Connection, batch_id: int, info: dict[str, Any]) -> None:
        tx.execute(
            "UPDATE batches SET provider_id = ?, status = ?, updated_at = ? WHERE id = ?",
            (info["id"], info.get("status") or "validating", time.time(), batch_id),
        )

    async def _upload(self, batch_id: int, content: bytes) -> str:
        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field(
                "file",
                content,
                filename=f"glan-batch-{batch_id}.jsonl",
                content_type="application/jsonl",
            )
            return data

        info = await self._call("POST", "/files", form=form, what="uploading a batch file")
        file_id = str(info["id"])
        # Azure processes an upload before a batch may use it.
        while info.get("status") in ("pending", "running", "uploaded") and self.azure:
            await asyncio.sleep(min(self.poll_interval, 5.0))
            info = await self._call("GET", f"/files/{file_id}", what="checking a batch file")
        if info.get("status") == "error":
            raise RequestFailed(
                f"the provider refused batch file {file_id}: {info.get('status_details')}"
            )
        return file_id

    async def _create(self, batch_id: int, file_id: str) -> dict[str, Any]:
        """POST /batches once: a try that failed without an answer may still have created it."""
        body = {
            "input_file_id": file_id,
            "endpoint": self.endpoint,
            "completion_window": "24h",
            "metadata": {"glan_batch": str(batch_id)},
        }
        tries, problem = self.retry.max_retries + 1, "no attempt made"
        for attempt in range(tries):
            try:
                return await self._once("POST", "/batches", json=body, attempt=attempt)
            except _Transient as error:
                problem = str(error)
                await asyncio.sleep(self.retry.delay(attempt, error.retry_after))
            listed = await self._list_batches(pages=1)
            found = next((b for b in listed if b.get("input_file_id") == file_id), None)
            if found is not None:
                return found
        raise RequestFailed(f"creating a batch: gave up after {tries} tries: {problem}")

    async def _list_batches(self, pages: int, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent batches, newest first."""
        batches: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": str(limit)}
        for _ in range(pages):
            page = await self._call("GET", "/batches", params=params, what="listing batches")
            data = page.get("data") or []
            batches.extend(b for b in data if isinstance(b, dict))
            if not page.get("has_more") or not data:
                break
            params = {"limit": str(limit), "after": str(data[-1]["id"])}
        return batches

    # -- polling and collecting ---------------------------------------------------------------

    def _watch(self, batch_id: int, provider_id: str) -> None:
        if batch_id in self._watchers:
            return

        def keys() -> list[str]:
            return [
                k
                for (k,) in self.store.db.execute(
                    "SELECT key FROM batch_requests WHERE batch = ?", (batch_id,)
                )
            ]

        task = self._spawn(self._follow(batch_id, provider_id), keys)
        self._watchers[batch_id] = task
        task.add_done_callback(lambda _: self._watchers.pop(batch_id, None))

    async def _follow(self, batch_id: int, provider_id: str) -> None:
        info: dict[str, Any] = {"id": provider_id, "status": "lost"}
        while True:
            try:
                info = await self._call(
                    "GET", f"/batches/{provider_id}", what=f"polling batch {provider_id}"
                )
            except _NotFound:
                log.warning(
                    "batch %s is unknown to %s (another account or key?); resubmitting its"
                    " requests",
                    provider_id,
                    self.base_url,
                )
                info = {"id": provider_id, "status": "lost"}
                break
            except RequestFailed as error:  # the provider is having trouble: ask again later
                log.warning("polling batch %s failed (%s); trying again", provider_id, error)
                await asyncio.sleep(self.poll_interval)
                continue
            self._record_status(batch_id, info)
            if info.get("status") in FINAL:
                break
            await asyncio.sleep(self.poll_interval)
        await self._collect(batch_id, info)

    def _record_status(self, batch_id: int, info: dict[str, Any]) -> None:
        counts = info.get("request_counts") or {}
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET status = ?, completed = ?, failed = ?, updated_at = ?"
                " WHERE id = ?",
                (
                    str(info.get("status")),
                    int(counts.get("completed") or 0),
                    int(counts.get("failed") or 0),
                    time.time(),
                    batch_id,
                ),
            )

    async def _collect(self, batch_id: int, info: dict[str, Any]) -> None:
        """Take a finished batch's results: commit them all, then hand them out."""
        provider_id, status = info["id"], str(info.get("status"))
        outcomes: dict[str, ChatResponse | _LineError] = {}
        for file_id in (info.get("output_file_id"), info.get("error_file_id")):
            if not file_id:
                continue
            try:
                content = await self._call(
                    "GET", f"/files/{file_id}/content", raw=True, what="downloading results"
                )
            except _NotFound:
                log.warning("result file %s of batch %s is gone", file_id, provider_id)
                continue
            for line in _jsonl(content):
                key, outcome = _outcome(line)
                if key is not None:
                    outcomes[key] = outcome
        rows = self.store.db.execute(
            "SELECT key FROM batch_requests WHERE batch = ?", (batch_id,)
        ).fetchall()
        (created,) = self.store.db.execute(
            "SELECT created_at FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        now = time.time()
        batch_error = _batch_error(info)
        done: list[tuple[str, ChatResponse]] = []
        failed: list[tuple[str, str]] = []
        again: dict[str, str] = {}
        for (key,) in rows:
            outcome = outcomes.get(key)
            if isinstance(outcome, ChatResponse):
                outcome.latency = now - created  # from submission to collection
                done.append((key, outcome))
            elif isinstance(outcome, _LineError) and not outcome.retryable:
                failed.append((key, outcome.message))
            else:
                again[key] = outcome.message if outcome else batch_error or f"batch {status}"
        with self._tx() as tx:
            tx.execute(_FORGET_SAVED)
            tx.executemany(
                "INSERT OR REPLACE INTO batch_results (key, batch, response) VALUES (?, ?, ?)",
                ((key, batch_id, _dumps(response)) for key, response in done),
            )
            tx.executemany(
                "UPDATE batch_requests SET status = ?, error = ? WHERE key = ? AND batch = ?",
                [("done", None, key, batch_id) for key, _ in done]
                + [("failed", error, key, batch_id) for key, error in failed]
                + [("resubmit", error, key, batch_id) for key, error in again.items()],
            )
            tx.execute(
                "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?,"
                " completed = ?, failed = ?, error = ?, collected = 1, updated_at = ? WHERE id = ?",
                (
                    status,
                    info.get("output_file_id"),
                    info.get("error_file_id"),
                    len(done),
                    len(failed) + len(again),
                    batch_error,
                    now,
                    batch_id,
                ),
            )
        log.info(
            "batch %s %s: %d replies, %d failed, %d to resubmit",
            provider_id,
            status,
            len(done),
            len(failed),
            len(again),
        )
        if again and status != "completed":
            log.warning(
                "batch %s %s with %d of %d requests unfinished; resubmitting those",
                provider_id,
                status,
                len(again),
                len(rows),
            )
        for key, response in done:
            self._deliver(key, response)
        for key, error in failed:
            self._deliver(key, RequestFailed(f"batch {provider_id}: {error}"))
        for key, reason in again.items():
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

    # -- plumbing -----------------------------------------------------------------------------

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
            elif not isinstance(error, RequestFailed | StoreError):
                log.error("batch task failed", exc_info=error)
            for key in keys() if keys is not None else ():
                self._deliver(key, error)

        task.add_done_callback(done)
        return task

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Writes that are durable when the block ends (in the engine's open transaction, if one
        is open, which is then committed)."""
        db = self.store.db
        own = not db.in_transaction
        try:
            if own:
                db.execute("BEGIN")
            yield db
            if own:
                db.execute("COMMIT")
        except sqlite3.Error as error:
            if own and db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(
                f"writing batch records to {self.store.path} failed: {error}"
            ) from None
        if not own:
            self.store.commit()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        """One API call, tried again on transient failures."""
        problem = "no attempt made"
        for attempt in range(self.retry.max_retries + 1):
            try:
                return await self._once(
                    method, path, json=json, form=form, params=params, raw=raw, attempt=attempt
                )
            except _Transient as error:
                problem = str(error)
                if attempt < self.retry.max_retries:
                    await asyncio.sleep(self.retry.delay(attempt, error.retry_after))
        raise RequestFailed(f"{what}: gave up after {self.retry.max_retries + 1} tries: {problem}")

    async def _once(
        self,
        method: str,
        path: str,
        *,
        attempt: int,
        json: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        assert self._session is not None, "use 'async with BatchClient(...)'"
        url = self.base_url + path
        headers = dict(self._headers)
        data: Any = None
        if json is not None:
            data = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = form()
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, params={**self._params, **(params or {})}
            ) as response:
                status, body = response.status, await response.read()
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as error:
            if not self._reached and attempt >= 1:
                raise FatalLLMError(
                    f"cannot reach the batch API at {self.base_url} ({error}); is --base-url right?"
                ) from None
            raise _Transient(f"connection failed: {error}") from None
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _Transient(f"{error.__class__.__name__} {error}".strip()) from None
        self._reached = True
        if 200 <= status < 300:
            if raw:
                return body
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise _Transient(f"unreadable reply from {method} {path}") from None
        message = error_message(body) or f"HTTP {status}"
        if status in (401, 403):
            raise FatalLLMError(
                f"the batch API at {self.base_url} rejected the API key (HTTP {status}:"
                f" {message}); check OPENAI_API_KEY or --api-key"
            )
        if status == 404:
            if path in ("/files", "/batches"):
                raise FatalLLMError(
                    f"{self.base_url} has no batch API ({method} {url}: HTTP 404); drop --batch"
                    " to send every request online"
                )
            raise _NotFound(f"HTTP 404 from {method} {url}: {message}")
        if status in _RETRY_STATUSES:
            raise _Transient(f"HTTP {status}: {message}", retry_after)
        raise RequestFailed(f"{method} {path}: HTTP {status}: {message}")


# -- lines ----------------------------------------------------------------------------------------


def _jsonl(content: bytes) -> Iterator[dict[str, Any]]:
    for raw in io.BytesIO(content):
        if raw.strip():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("skipping an unreadable line of a batch result file")
                continue
            if isinstance(line, dict):
                yield line


def _outcome(line: dict[str, Any]) -> tuple[str | None, ChatResponse | _LineError]:
    """A result line's key and its reply, or what went wrong with it."""
    key = line.get("custom_id")
    key = key if isinstance(key, str) else None
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict):
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        if status == 200:
            try:
                return key, ChatResponse.from_openai(body, batch=True)
            except (KeyError, IndexError, TypeError, ValueError) as problem:
                return key, _LineError(f"unreadable reply ({problem})", retryable=True)
        message = error_message(body) or "no message"
        return key, _LineError(f"HTTP {status}: {message}", status in _RETRY_STATUSES)
    if isinstance(error, dict):  # batch_expired, batch_cancelled, ...: never ran
        return key, _LineError(f"{error.get('code')}: {error.get('message')}", retryable=True)
    return key, _LineError("no response", retryable=True)


def _dumps(response: ChatResponse) -> str:
    return orjson.dumps(
        {
            "text": response.text,
            "finish_reason": response.finish_reason,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "latency": response.latency,
            "model": response.model,
        }
    ).decode()


def _response(stored: dict[str, Any]) -> ChatResponse:
    return ChatResponse(**stored, batch=True)


def _batch_error(info: dict[str, Any]) -> str | None:
    errors = info.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not data:
        return None
    return "; ".join(
        str(e.get("message") or e.get("code")) for e in data[:3] if isinstance(e, dict)
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
