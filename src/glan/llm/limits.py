"""Staying under a provider's limits: requests and tokens per minute, a shared pause after a 429,
and a concurrency that backs off when the provider pushes back and recovers when it stops.

Buckets run in debt: a request may start while the bucket is not negative, so one call larger
than a second's allowance is never stuck, and the average rate still holds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]

BURST_SECONDS = 1.0  # a bucket holds this many seconds of allowance


class TokenBucket:
    def __init__(self, per_minute: float, clock: Clock) -> None:
        self.clock = clock
        self.set_rate(per_minute)
        self.level = self.capacity
        self.updated = clock()

    def set_rate(self, per_minute: float) -> None:
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, self.per_second * BURST_SECONDS)

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_second)
        self.updated = now

    def wait_time(self) -> float:
        """Seconds until the bucket is out of debt (0: go now)."""
        self._refill()
        # A hair below zero after sleeping the exact wait is round-off, not debt.
        return 0.0 if self.level >= -1e-6 else -self.level / self.per_second

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class Limiter(Protocol):
    """What the client asks of a model's limiter: ``RateLimiter`` in one process, a proxy of the
    Ray engine's meter actor across a cluster."""

    async def acquire(self, tokens: int) -> None: ...

    def settle(self, estimated: int, actual: int) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def learn(self, headers: Mapping[str, str]) -> None: ...


class RateLimiter:
    """Requests and tokens per minute for one model, plus a pause everyone honours after a 429."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.requests = TokenBucket(rpm, clock) if rpm else None
        self.tokens = TokenBucket(tpm, clock) if tpm else None
        self.configured = (rpm is not None, tpm is not None)
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def for_model(
        cls,
        limits: Mapping[str, tuple[float | None, float | None]],
        model: str,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> RateLimiter:
        """The limiter of ``model`` as (RPM, TPM) ``limits`` set them (``"*"``: any other)."""
        rpm, tpm = limits.get(model) or limits.get("*") or (None, None)
        return cls(rpm, tpm, clock=clock, sleep=sleep)

    async def acquire(self, tokens: int) -> None:
        """Wait for a turn (in arrival order), then take one request and ``tokens`` tokens."""
        if self.requests is None and self.tokens is None and self.paused_until <= self.clock():
            return  # nothing to hold back: the hot path stays cheap
        async with self._lock:
            while True:
                wait = max(
                    self.paused_until - self.clock(),
                    self.requests.wait_time() if self.requests else 0.0,
                    self.tokens.wait_time() if self.tokens else 0.0,
                )
                if wait <= 0:
                    break
                await self.sleep(wait)
            if self.requests:
                self.requests.take(1)
            if self.tokens:
                self.tokens.take(tokens)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known."""
        if self.tokens:
            self.tokens.take(actual - estimated)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def learn(self, headers: Mapping[str, str]) -> None:
        """Adopt the provider's limits (``x-ratelimit-*``) where the user set none, and wait for
        the reset when a budget is spent."""
        for kind, configured in zip(("requests", "tokens"), self.configured, strict=True):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit and not configured:
                bucket = getattr(self, kind)
                if bucket is None:
                    setattr(self, kind, TokenBucket(limit, self.clock))
                elif bucket.per_second * 60 != limit:
                    bucket.set_rate(limit)
            if _number(headers.get(f"x-ratelimit-remaining-{kind}")) == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.pause(reset)


class AdaptiveConcurrency:
    """A semaphore whose size halves on push-back and grows by one per window of successes."""

    def __init__(self, limit: int) -> None:
        self.maximum = limit
        self.limit = float(limit)
        self.in_flight = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self.in_flight < int(self.limit) and not self._waiting:
            self.in_flight += 1  # the common case: no lock, no future
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn  # the slot is taken on our behalf when the turn comes
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        while self._waiting and self.in_flight < int(self.limit):
            turn = self._waiting.popleft()
            if not turn.done():
                self.in_flight += 1
                turn.set_result(None)

    def back_off(self) -> None:
        self.limit = max(1.0, self.limit / 2)

    def succeeded(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1 / self.limit)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset times: ``"1s"``, ``"6m0s"``, ``"20ms"``, or plain seconds."""
    if not text:
        return None
    number = _number(text)
    if number is not None:
        return number
    parts = _DURATION.findall(text)
    return sum(float(value) * _UNITS[unit] for value, unit in parts) if parts else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def estimate_tokens(body_chars: int, max_tokens: int | None) -> int:
    """Tokens a request may count against TPM: its prompt (about 4 characters a token) and the
    completion it may produce (providers count ``max_tokens`` up front)."""
    return body_chars // 4 + (max_tokens or 512)
