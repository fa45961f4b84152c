"""A provider's batch HTTP API (OpenAI's, and Azure OpenAI's spelling of it), and nothing more.

Files go up to ``/files``, batches are made, listed and polled at ``/batches``, output and error
files come back from ``/files/{id}/content``. Transient failures are tried again here (the
server's Retry-After honoured); what the user must fix raises ``FatalLLMError``; what keeps
failing raises ``RequestFailed``. What to keep and when to send is the batch client's business.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from glan.llm.client import RETRY_STATUSES, RetryPolicy, error_message, retry_after_seconds
from glan.llm.errors import FatalLLMError, RequestFailed
from glan.llm.types import ChatResponse

log = logging.getLogger(__name__)

# OpenAI's limits per batch (Azure OpenAI allows 100,000 requests, also 200 MB).
MAX_REQUESTS = 50_000
MAX_BYTES = 200_000_000
AZURE_API_VERSION = "2024-10-21"  # the data-plane API's GA version with batches
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
FINAL = frozenset({"completed", "expired", "cancelled", "failed"})  # nothing changes after these


class NotFound(RequestFailed):
    """HTTP 404 for one file or batch (the API itself answered)."""


class _Transient(Exception):
    """A try that may work if repeated: (what went wrong, Retry-After)."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


@dataclass(frozen=True)
class LineError:
    """Why a line of a batch has no reply; ``retryable``: another batch may give it one."""

    message: str
    retryable: bool


@dataclass(frozen=True)
class BatchInfo:
    """What the provider says of one batch."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0  # lines with a reply so far
    failed: int = 0
    error: str | None = None  # why the batch as a whole failed (a refused file), if it did

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> BatchInfo:
        counts = info.get("request_counts") or {}
        return cls(
            id=str(info["id"]),
            status=str(info.get("status") or ""),
            input_file_id=info.get("input_file_id"),
            output_file_id=info.get("output_file_id"),
            error_file_id=info.get("error_file_id"),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            error=_batch_error(info),
        )


def azure_options(base_url: str) -> tuple[bool, str | None]:
    """(azure, api_version) for a base URL, recognising Azure OpenAI resources by their host.

    Azure's v1 API (``https://RESOURCE.openai.azure.com/openai/v1``) takes no api-version; the
    older data-plane API (``.../openai``) takes ``AZURE_API_VERSION``.
    """
    parts = urlsplit(base_url)
    if not (parts.hostname or "").endswith(AZURE_HOSTS):
        return False, None
    return True, None if parts.path.rstrip("/").endswith("/v1") else AZURE_API_VERSION


class BatchAPI:
    """One provider's batch endpoints over one aiohttp session (``open``, then ``close``).

    ``azure=True`` speaks Azure OpenAI: an ``api-key`` header, ``api_version`` as the api-version
    query parameter (None for Azure's v1 API) and ``/chat/completions`` as each line's url, the
    deployment name being the model.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        azure: bool = False,
        api_version: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        file_poll_interval: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.azure = azure
        self.endpoint = "/chat/completions" if azure else "/v1/chat/completions"
        self.retry = retry or RetryPolicy()
        self.file_poll_interval = file_poll_interval
        self._params = {"api-version": api_version} if api_version else {}
        self._headers: dict[str, str] = {}
        if api_key:
            self._headers = (
                {"api-key": api_key} if azure else {"Authorization": f"Bearer {api_key}"}
            )
        # Files can be large: no limit on a whole transfer, only on silence.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._reached = False  # a reply ever came back: later connection errors are transient

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def line(self, custom_id: str, body: dict[str, Any]) -> bytes:
        """One request as a line of a batch input file."""
        line = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return orjson.dumps(line) + b"\n"

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file; its file id once the provider may use it."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", content, filename=filename, content_type="application/jsonl")
            return data

        info = await self._call("POST", "/files", form=form, what="uploading a batch file")
        file_id = str(info["id"])
        # Azure processes an upload before a batch may use it.
        while info.get("status") in ("pending", "running", "uploaded") and self.azure:
            await asyncio.sleep(self.file_poll_interval)
            info = await self._call("GET", f"/files/{file_id}", what="checking a batch file")
        if info.get("status") == "error":
            raise RequestFailed(
                f"the provider refused batch file {file_id}: {info.get('status_details')}"
            )
        return file_id

    async def create(self, file_id: str, metadata: dict[str, str]) -> BatchInfo:
        """POST /batches once: a try that failed without an answer may still have created it, so
        the batch list is asked before the next try."""
        body = {
            "input_file_id": file_id,
            "endpoint": self.endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        tries, problem = self.retry.max_retries + 1, "no attempt made"
        for attempt in range(tries):
            try:
                return BatchInfo.from_json(
                    await self._once("POST", "/batches", json=body, attempt=attempt)
                )
            except _Transient as error:
                problem = str(error)
                await asyncio.sleep(self.retry.delay(attempt, error.retry_after))
            listed = await self.recent(pages=1)
            found = next((b for b in listed if b.input_file_id == file_id), None)
            if found is not None:
                return found
        raise RequestFailed(f"creating a batch: gave up after {tries} tries: {problem}")

    async def recent(self, pages: int, limit: int = 100) -> list[BatchInfo]:
        """The most recent batches, newest first."""
        batches: list[BatchInfo] = []
        params: dict[str, str] = {"limit": str(limit)}
        for _ in range(pages):
            page = await self._call("GET", "/batches", params=params, what="listing batches")
            data = page.get("data") or []
            batches.extend(
                BatchInfo.from_json(b) for b in data if isinstance(b, dict) and "id" in b
            )
            if not page.get("has_more") or not data:
                break
            params = {"limit": str(limit), "after": str(data[-1]["id"])}
        return batches

    async def get(self, provider_id: str) -> BatchInfo:
        """A batch as it is now; ``NotFound`` if the provider does not know it."""
        info = await self._call(
            "GET", f"/batches/{provider_id}", what=f"polling batch {provider_id}"
        )
        return BatchInfo.from_json(info)

    async def results(self, info: BatchInfo) -> dict[str, ChatResponse | LineError]:
        """Each line's reply, or why it has none, by custom_id, from a finished batch's output
        and error files. A line in neither file is missing from the answer."""
        outcomes: dict[str, ChatResponse | LineError] = {}
        for file_id in (info.output_file_id, info.error_file_id):
            if not file_id:
                continue
            try:
                content = await self._call(
                    "GET", f"/files/{file_id}/content", raw=True, what="downloading results"
                )
            except NotFound:
                log.warning("result file %s of batch %s is gone", file_id, info.id)
                continue
            for line in _jsonl(content):
                key, outcome = _outcome(line)
                if key is not None:
                    outcomes[key] = outcome
        return outcomes

    # -- one call -----------------------------------------------------------------------------

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
        assert self._session is not None, "open() the BatchAPI first"
        headers = dict(self._headers)
        data: Any = None
        if json is not None:
            data = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = form()  # anew per try: aiohttp sends a FormData only once
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=data,
                headers=headers,
                params={**self._params, **(params or {})},
            ) as response:
                status, body = response.status, await response.read()
                retry_after = retry_after_seconds(response.headers)
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as error:
            if not self._reached and attempt >= 1:
                raise FatalLLMError(
                    f"cannot reach the batch API at {self.base_url} ({error}); is --base-url right?"
                ) from None
            raise _Transient(f"connection failed: {error}") from None
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _Transient(f"{error.__class__.__name__} {error}".strip()) from None
        self._reached = True
        if not 200 <= status < 300:
            self._refuse(method, path, status, body, retry_after)
        if raw:
            return body
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Transient(f"unreadable reply from {method} {path}") from None

    def _refuse(
        self, method: str, path: str, status: int, body: bytes, retry_after: float | None
    ) -> None:
        """Raise what an error status means: stop the run, try again, or fail the call."""
        url = self.base_url + path
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
            raise NotFound(f"HTTP 404 from {method} {url}: {message}")
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}: {message}", retry_after)
        raise RequestFailed(f"{method} {path}: HTTP {status}: {message}")


# -- files ----------------------------------------------------------------------------------------


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


def _outcome(line: dict[str, Any]) -> tuple[str | None, ChatResponse | LineError]:
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
                return key, LineError(f"unreadable reply ({problem})", retryable=True)
        message = error_message(body) or "no message"
        return key, LineError(f"HTTP {status}: {message}", status in RETRY_STATUSES)
    if isinstance(error, dict):  # batch_expired, batch_cancelled, ...: never ran
        return key, LineError(f"{error.get('code')}: {error.get('message')}", retryable=True)
    return key, LineError("no response", retryable=True)


def _batch_error(info: dict[str, Any]) -> str | None:
    errors = info.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not data:
        return None
    return "; ".join(
        str(e.get("message") or e.get("code")) for e in data[:3] if isinstance(e, dict)
    )
