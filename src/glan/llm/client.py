"""OpenAI-compatible chat completions over one aiohttp session.

Why aiohttp and not the ``openai`` SDK: at GLAN's scale the client's CPU per request is the ceiling
(about 0.12 ms per request for a bare aiohttp loop against 2 ms for the SDK on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from glan.llm.errors import FatalLLMError, RequestFailed
from glan.llm.limits import (
    AdaptiveConcurrency,
    Clock,
    Limiter,
    RateLimiter,
    Sleep,
    estimate_tokens,
)
from glan.llm.negotiation import Negotiator, StructuredOutput, is_refusal
from glan.llm.structured import Mode, body_for, conforms, schema_in_prompt
from glan.llm.types import ChatRequest, ChatResponse

log = logging.getLogger(__name__)

StructuredMode = StructuredOutput  # the name it had


class TeacherSettings(Protocol):
    """What a client needs of a config (GenerateConfig, the taxonomy build's)."""

    timeout: float
    max_retries: int
    retry_backoff: float
    structured_output: StructuredMode
    concurrency: int


# Statuses worth another try, here and in the batch API.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class RetryPolicy:
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter; the server's Retry-After wins when it says more."""
        backoff = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        if retry_after is not None:
            return min(self.backoff_max, max(retry_after, backoff * 0.1))
        return backoff


class OpenAIClient:
    """``async complete(request) -> ChatResponse`` for any OpenAI-compatible server.

    Transient failures (429, 5xx, timeouts, dropped connections, unparseable bodies) are retried
    here; what cannot succeed without the user (bad key, wrong URL or model, unreachable server)
    raises FatalLLMError at once; a request that keeps failing raises RequestFailed.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        structured: StructuredMode | Negotiator = "auto",
        max_connections: int = 256,
        limits: Mapping[str, tuple[float | None, float | None]] | None = None,
        limiter_for: Callable[[str], Limiter] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``limits`` maps a model (or ``"*"`` for every other model) to (RPM, TPM); models
        without a limit learn one from the provider's ``x-ratelimit-*`` headers.
        ``limiter_for`` replaces these per-process limiters (a cluster shares one per model).
        ``structured``: auto, a mode to force, or a ``Negotiator`` (one that remembers)."""
        check_base_url(base_url)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.retry = retry or RetryPolicy()
        self.negotiator = (
            structured if isinstance(structured, Negotiator) else Negotiator(structured)
        )
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._reached = False  # a reply ever came back: later connection errors are transient
        self._served = False  # a chat completion ever came back: the server speaks the API
        self._limits = dict(limits or {})
        self._limiters: dict[str, Limiter] = {}
        self._limiter_for = limiter_for
        self._clock, self._sleep = clock, sleep
        self.concurrency = AdaptiveConcurrency(max_connections)
        self.requests_sent = 0
        self.rate_limited = 0  # 429s received

    @classmethod
    def for_settings(
        cls,
        settings: TeacherSettings,
        base_url: str,
        api_key: str | None,
        limits: Mapping[str, tuple[float | None, float | None]] | None = None,
        limiter_for: Callable[[str], Limiter] | None = None,
        negotiator: Negotiator | None = None,
    ) -> OpenAIClient:
        """A client as a run's (or a taxonomy build's) settings describe it; ``negotiator``
        (one that remembers modes in the run's store) replaces ``structured_output``."""
        return cls(
            base_url,
            api_key,
            timeout=settings.timeout,
            retry=RetryPolicy(
                max_retries=settings.max_retries, backoff_base=settings.retry_backoff
            ),
            structured=negotiator or settings.structured_output,
            max_connections=settings.concurrency,
            limits=limits,
            limiter_for=limiter_for,
        )

    async def __aenter__(self) -> OpenAIClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        retry_after: float | None = None
        problem = "no attempt made"
        attempt = 0
        while True:
            # Read each time: another request may have found the server's structured mode.
            mode = self.negotiator.mode(request.model) if request.schema is not None else None
            outcome = await self._attempt(request, attempt, mode)
            if isinstance(outcome, ChatResponse):
                if mode is None or self._keep(request, mode, outcome):
                    return outcome
                continue  # asked again at once in the mode now current
            if isinstance(outcome, _Refused):
                assert mode is not None
                if not self.negotiator.refused(request.model, mode, outcome.message):
                    raise FatalLLMError(
                        f"the teacher at {self.base_url} refused structured output as {mode}"
                        f" ({outcome.message}); use --structured-output auto to let glan find the"
                        " way this server takes (glan check shows it)"
                    )
                continue  # a refusal spends no retry and waits for nothing
            problem, retry_after = outcome
            attempt += 1
            if attempt > self.retry.max_retries:
                raise RequestFailed(
                    f"gave up after {self.retry.max_retries + 1} attempts: {problem}"
                )
            await self._sleep(self.retry.delay(attempt - 1, retry_after))

    def _keep(self, request: ChatRequest, mode: Mode, response: ChatResponse) -> bool:
        """Whether a structured reply is the one to return, or the mode was ignored and the
        request is to be asked again in the next one (see ``negotiation``)."""
        assert request.schema is not None
        if response.truncated or self.negotiator.confirmed(request.model) == mode:
            return True  # cut off at max_tokens, it says nothing; or the mode is known to work
        if conforms(response.text, request.schema):
            self.negotiator.worked(request.model, mode)
            return True
        return not self.negotiator.ignored(request.model, mode)

    async def _attempt(
        self, request: ChatRequest, attempt: int, mode: Mode | None
    ) -> ChatResponse | _Refused | tuple[str, float | None]:
        """One try: a response, a refusal of the structured mode, or (what went wrong,
        Retry-After) when trying again may help."""
        sent = schema_in_prompt(request) if mode == "prompt" else request
        if mode is None or mode == "json_schema":
            body = request.wire  # serialised once per request (no schema: no response_format)
        else:
            body = orjson.dumps(body_for(request, mode))
        limiter = self.limiter(request.model)
        estimate = estimate_tokens(sum(len(m["content"]) for m in sent.messages), sent.max_tokens)
        await limiter.acquire(estimate)
        started = time.perf_counter()
        try:
            async with self.concurrency:
                status, headers, payload = await self._post(body)
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as error:
            limiter.settle(estimate, 0)
            if not self._reached and attempt >= 1:
                raise FatalLLMError(
                    f"cannot reach the teacher at {self.base_url} ({error}); is the server"
                    " running and is --base-url right?"
                ) from None
            return f"connection failed: {error}", None
        except (TimeoutError, aiohttp.ClientError) as error:
            return f"{error.__class__.__name__} {error}".strip(), None
        self.requests_sent += 1
        self._reached = True
        limiter.learn(headers)
        if status == 200:
            if not is_completion(payload):
                limiter.settle(estimate, 0)
                if not self._served:
                    raise FatalLLMError(not_openai(self.base_url, status, headers, payload))
                return f"unreadable reply body ({describe_body(payload, headers)})", None
            try:
                response = ChatResponse.from_openai(payload, time.perf_counter() - started)
            except (ValueError, KeyError, IndexError, TypeError) as error:
                return f"unreadable reply body ({error})", None
            self._served = True
            limiter.settle(estimate, response.prompt_tokens + response.completion_tokens)
            self.concurrency.succeeded()
            return response
        limiter.settle(estimate, 0)
        if status == 429:
            # Everyone waits, not just this request: the provider counts them all.
            self.rate_limited += 1
            self.concurrency.back_off()
            limiter.pause(retry_after_seconds(headers) or self.retry.delay(attempt, None))
        message = error_message(payload) or f"HTTP {status}"
        if status in (401, 403):
            raise FatalLLMError(
                f"the teacher at {self.base_url} rejected the API key (HTTP {status}: {message});"
                " check OPENAI_API_KEY or --api-key"
            )
        if status == 404:
            raise FatalLLMError(
                f"HTTP 404 from {self.url} ({message}); check --base-url (it usually ends in /v1)"
                f" and that the model '{request.model}' exists there"
            )
        if mode is not None and mode != "prompt" and is_refusal(status, message, payload):
            return _Refused(f"HTTP {status}: {one_line(message)}")
        if status not in RETRY_STATUSES:
            if is_page(payload, headers) and not self._served:
                raise FatalLLMError(not_openai(self.base_url, status, headers, payload))
            raise RequestFailed(f"HTTP {status}: {message}")
        return f"HTTP {status}: {message}", retry_after_seconds(headers)

    def limiter(self, model: str) -> Limiter:
        limiter = self._limiters.get(model)
        if limiter is None:
            if self._limiter_for is not None:
                limiter = self._limiter_for(model)
            else:
                limiter = RateLimiter.for_model(
                    self._limits, model, clock=self._clock, sleep=self._sleep
                )
            self._limiters[model] = limiter
        return limiter

    async def _post(self, body: bytes) -> tuple[int, Any, Any]:
        assert self._session is not None, "use 'async with OpenAIClient(...)'"
        async with self._session.post(self.url, data=body, headers=self._headers) as response:
            raw = await response.read()
            try:
                payload = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                payload = raw[:4096].decode(errors="replace")
            return response.status, response.headers, payload


@dataclass(frozen=True)
class _Refused:
    """The server refused the structured mode the request was sent in."""

    message: str


def check_base_url(base_url: str) -> None:
    """An http(s) URL, or FatalLLMError at once (``ftp://...`` would be retried for nothing)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FatalLLMError(
            f"--base-url {base_url!r} is not an http:// or https:// URL; an OpenAI-compatible"
            " server's looks like http://localhost:8000/v1"
        )


def is_completion(payload: Any) -> bool:
    return isinstance(payload, dict) and "choices" in payload


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def is_page(payload: Any, headers: Any) -> bool:
    """An HTML page (a web server's, not an API's)."""
    kind = (headers.get("Content-Type") or "") if headers is not None else ""
    text = payload.lstrip()[:100].lower() if isinstance(payload, str) else ""
    return "html" in kind.lower() or text.startswith(("<!doctype", "<html", "<head", "<body"))


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_body(payload: Any, headers: Any = None) -> str:
    """What came back instead of a chat completion, in a few words."""
    if is_page(payload, headers):
        match = _TITLE.search(payload) if isinstance(payload, str) else None
        title = one_line(html.unescape(match.group(1)), 80) if match else ""
        return f"an HTML page {title!r}" if title else "an HTML page"
    if isinstance(payload, dict):
        keys = ", ".join(list(payload)[:6]) or "none"
        return f"JSON without 'choices' (keys: {keys})"
    if isinstance(payload, list):
        return "a JSON list"
    if payload is None:
        return "an empty body"
    return repr(one_line(str(payload), 80))


def not_openai(base_url: str, status: int, headers: Any, payload: Any) -> str:
    return (
        f"the server at {base_url} is not an OpenAI-compatible API (got"
        f" {describe_body(payload, headers)}, HTTP {status}, for POST /chat/completions); check"
        " --base-url"
    )


def error_message(payload: Any) -> str:
    """What an error body says, in OpenAI's shape or the common others (a raw body too)."""
    if isinstance(payload, bytes):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload.decode(errors="replace")[:300]
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        if isinstance(error, str):
            return error
        return str(payload.get("message") or payload.get("detail") or "")
    if isinstance(payload, str) and is_page(payload, None):
        return describe_body(payload)
    return one_line(str(payload or ""), 300)


def retry_after_seconds(headers: Any) -> float | None:
    """The Retry-After header in seconds (sent as seconds or as an HTTP date); None when absent
    or unreadable: a malformed header costs the server's hint, not the request."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())
