"""Rate limits: buckets held over a (scaled) minute, 429 storms, limits learnt from headers."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from glan.llm.client import OpenAIClient, RetryPolicy
from glan.llm.limits import AdaptiveConcurrency, RateLimiter, parse_duration
from glan.llm.types import ChatRequest


class VirtualTime:
    """A clock that moves only when someone sleeps: a minute passes in milliseconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def test_rpm_is_held_over_a_minute():
    time_ = VirtualTime()
    limiter = RateLimiter(rpm=600, clock=time_.clock, sleep=time_.sleep)
    sent = 0
    while True:
        await limiter.acquire(1)
        if time_.now >= 60:
            break
        sent += 1
    assert 600 * 0.95 <= sent <= 600 * 1.05


async def test_tpm_is_held_with_real_usage_corrections():
    time_ = VirtualTime()
    limiter = RateLimiter(tpm=60_000, clock=time_.clock, sleep=time_.sleep)
    rng = random.Random(1)
    used = 0
    while True:
        estimate = rng.randint(200, 3000)
        await limiter.acquire(estimate)
        if time_.now >= 60:
            break
        actual = int(estimate * rng.uniform(0.3, 1.0))  # replies are shorter than max_tokens
        limiter.settle(estimate, actual)
        used += actual
    assert 60_000 * 0.95 <= used <= 60_000 * 1.05


def request(i: int) -> ChatRequest:
    return ChatRequest(model="m", messages=({"role": "user", "content": f"hello {i}"},))


async def test_rpm_is_held_against_a_real_server_on_a_scaled_clock(teacher):
    scale = 20.0  # one minute of the limiter's clock is three real seconds
    start = time.monotonic()

    def clock() -> float:
        return (time.monotonic() - start) * scale

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / scale)

    client = OpenAIClient(
        teacher.base_url, "sk-test", limits={"*": (600, None)}, clock=clock, sleep=sleep
    )
    done_at: list[float] = []

    async def worker(w: int) -> None:
        i = 0
        while clock() < 60:
            await client.complete(request(w * 10_000 + i))
            done_at.append(clock())
            i += 1

    async with client:
        await asyncio.gather(*(worker(w) for w in range(32)))
    in_the_minute = sum(1 for t in done_at if t < 60)
    assert in_the_minute <= 600 * 1.05
    assert in_the_minute >= 600 * 0.8  # nothing else slowed it much (a loaded CI box may)


async def test_a_429_storm_pauses_everyone_backs_off_and_recovers(teacher):
    teacher.retry_after = "0.05"
    teacher.set_fault_rates({"429": 0.3})
    client = OpenAIClient(
        teacher.base_url,
        "sk-test",
        retry=RetryPolicy(max_retries=20, backoff_base=0.01),
        max_connections=32,
    )
    lowest = 32.0

    async def one(i: int) -> None:
        nonlocal lowest
        response = await client.complete(request(i))
        assert response.text
        lowest = min(lowest, client.concurrency.limit)

    async with client:
        await asyncio.gather(*(one(i) for i in range(300)))
        assert client.rate_limited > 0
        assert lowest < 32
        teacher.reset()
        await asyncio.gather(*(one(1000 + i) for i in range(300)))
        assert client.concurrency.limit > lowest


def test_limits_are_learnt_from_headers_unless_configured():
    time_ = VirtualTime()
    learnt = RateLimiter(clock=time_.clock, sleep=time_.sleep)
    learnt.learn({"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "6000"})
    assert learnt.requests is not None and learnt.requests.per_second == 1
    assert learnt.tokens is not None and learnt.tokens.per_second == 100

    configured = RateLimiter(rpm=30, clock=time_.clock, sleep=time_.sleep)
    configured.learn({"x-ratelimit-limit-requests": "6000"})
    assert configured.requests is not None and configured.requests.per_second == 0.5

    configured.learn({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert configured.paused_until == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m", 3720.0), ("2.5", 2.5), ("", None)],
)
def test_reset_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


async def test_the_concurrency_gate_hands_slots_on_and_survives_cancellation():
    gate = AdaptiveConcurrency(2)
    entered: list[int] = []
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with gate:
            entered.append(i)
            await release.wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert entered == [0, 1] and gate.in_flight == 2  # two wait their turn
    tasks[2].cancel()  # a waiter gives up: its turn must not be lost
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert entered == [0, 1, 3]
    assert gate.in_flight == 0

    gate.back_off()
    assert gate.limit == 1
    for _ in range(10):
        gate.succeeded()
    assert gate.limit == 2  # grows back, never past the maximum
