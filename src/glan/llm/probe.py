"""What ``glan check`` finds out about an endpoint before a run spends anything on it.

In order, each with a few tiny requests: the server answers (``GET /models``); it takes the key;
the model is listed (llama.cpp and TGI serve their one model under any name, which is said rather
than failed); a tiny chat call's latency and tokens per second; which structured mode it takes
(one tiny schema request per mode, in the order a run tries them, each reply checked against the
schema, since some servers accept a mode and ignore it); and the rate-limit headers it sends.
The first thing that would stop a run is ``problem``: one line saying what to fix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from glan.llm.client import (
    check_base_url,
    describe_body,
    error_message,
    is_completion,
    is_page,
    not_openai,
    one_line,
)
from glan.llm.errors import FatalLLMError
from glan.llm.negotiation import forced_mode, is_refusal
from glan.llm.structured import MODES, Mode, body_for, conforms
from glan.llm.types import ChatRequest, ChatResponse

# A schema small enough for any model, with the shapes glan's own have (an object, an array of
# objects, required keys, closed objects).
PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "colours": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["colours"],
    "additionalProperties": False,
}
PROBE_PROMPT = "Name three colours."
CHAT_PROMPT = "Say hello in five words."
RATE_HEADERS = ("x-ratelimit-", "ratelimit-", "retry-after", "anthropic-ratelimit-")


@dataclass
class Finding:
    name: str
    state: str  # "ok", "warn", "fail" or "skip"
    detail: str


@dataclass
class ModeOutcome:
    mode: Mode
    state: str  # "takes", "refused", "ignored", "cut off", "failed", "not tried"
    detail: str = ""


@dataclass
class ProbeReport:
    base_url: str
    model: str
    findings: list[Finding] = field(default_factory=list)
    modes: list[ModeOutcome] = field(default_factory=list)
    mode: Mode | None = None  # the structured mode a run would use
    listed: list[str] | None = None  # the models /models lists; None: no such endpoint
    latency: float | None = None  # seconds of the tiny chat call
    tokens_per_second: float | None = None
    rate_headers: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # what to fix first; None: ready for a run

    def add(self, name: str, state: str, detail: str) -> None:
        self.findings.append(Finding(name, state, detail))

    def stop(self, name: str, problem: str) -> ProbeReport:
        self.add(name, "fail", problem)
        self.problem = self.problem or problem
        return self


class _Probe:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str | None, model: str
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self.rate_headers: dict[str, str] = {}

    async def get(self, path: str) -> tuple[int, Any, Any]:
        async with self.session.get(self.base + path, headers=self.headers) as response:
            return response.status, response.headers, await _payload(response)

    async def chat(self, body: dict[str, Any]) -> tuple[int, Any, Any, float]:
        started = time.perf_counter()
        async with self.session.post(
            self.base + "/chat/completions", data=orjson.dumps(body), headers=self.headers
        ) as response:
            payload = await _payload(response)
            self._note(response.headers)
            return response.status, response.headers, payload, time.perf_counter() - started

    def _note(self, headers: Any) -> None:
        for name, value in headers.items():
            if name.lower().startswith(RATE_HEADERS):
                self.rate_headers[name.lower()] = value


async def _payload(response: aiohttp.ClientResponse) -> Any:
    raw = await response.read()
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw[:4096].decode(errors="replace")


async def probe(
    base_url: str,
    api_key: str | None,
    model: str,
    *,
    structured: str = "auto",
    timeout: float = 120.0,
) -> ProbeReport:
    """Probe ``base_url`` for a run with ``model``; never raises for what the server does."""
    report = ProbeReport(base_url, model)
    try:
        check_base_url(base_url)
    except FatalLLMError as error:
        return report.stop("endpoint", str(error))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        state = _Probe(session, base_url, api_key, model)
        try:
            await _run(state, report, structured)
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as error:
            report.stop(
                "reachable",
                f"cannot reach {base_url} ({error}); is the server running and is --base-url"
                " right?",
            )
        except (TimeoutError, aiohttp.ClientError) as error:
            name = error.__class__.__name__
            report.stop("reachable", f"{base_url} did not answer in time ({name} {error})".strip())
        report.rate_headers = state.rate_headers
    return report


async def _run(state: _Probe, report: ProbeReport, structured: str) -> None:
    base_url, model = report.base_url, report.model
    # 1. reachable, key, models
    started = time.perf_counter()
    status, headers, payload = await state.get("/models")
    seconds = time.perf_counter() - started
    if status in (401, 403):
        report.stop("API key", _key_problem(base_url, status, payload))
        return
    if status == 200 and isinstance(payload, dict) and isinstance(payload.get("data"), list):
        report.listed = [str(m.get("id")) for m in payload["data"] if isinstance(m, dict)]
        report.add("reachable", "ok", f"GET /models answered in {seconds:.2f} s")
    elif status == 200:
        report.stop(
            "reachable",
            not_openai(base_url, status, headers, payload).replace(
                "POST /chat/completions", "GET /models"
            ),
        )
        return
    else:
        report.add("reachable", "warn", f"GET /models: HTTP {status} ({_brief(payload)}); going on")

    # 2. a tiny chat call
    request = ChatRequest(
        model=model,
        messages=({"role": "user", "content": CHAT_PROMPT},),
        temperature=0.0,
        max_tokens=16,
        seed=0,
    )
    status, headers, payload, seconds = await state.chat(request.body(response_format=False))
    if status in (401, 403):
        report.stop("API key", _key_problem(base_url, status, payload))
        return
    if (status == 200 and not is_completion(payload)) or (
        status != 200 and is_page(payload, headers)
    ):
        report.stop("chat", not_openai(base_url, status, headers, payload))
        return
    if status == 404:
        report.stop("model", _model_problem(model, report.listed, _brief(payload)))
        return
    if status != 200:
        report.stop("chat", f"a tiny chat call failed: HTTP {status} ({_brief(payload)})")
        return
    report.add("API key", "ok", "accepted" if "Authorization" in state.headers else "none needed")
    _model_finding(report, payload)
    try:
        reply = ChatResponse.from_openai(payload, seconds)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        report.stop("chat", f"the reply to a tiny chat call is unreadable ({error})")
        return
    report.latency = seconds
    if reply.completion_tokens:
        report.tokens_per_second = reply.completion_tokens / seconds if seconds > 0 else None
        speed = f", {report.tokens_per_second:.1f} tokens/s"
    else:
        speed = " (no token counts in usage)"
    report.add("chat", "ok", f"{seconds:.2f} s for {reply.completion_tokens} tokens{speed}")

    # 3. structured output
    forced = forced_mode(structured)
    await _structured(state, report, [forced] if forced else list(MODES))

    # 4. rate limits
    if state.rate_headers:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(state.rate_headers.items())[:6])
        report.add("rate limits", "ok", f"learnt from headers ({shown})")
    else:
        report.add(
            "rate limits",
            "ok",
            "no rate-limit headers; set --rpm/--tpm if the provider limits you",
        )


async def _structured(state: _Probe, report: ProbeReport, modes: list[Mode]) -> None:
    request = ChatRequest(
        model=report.model,
        messages=({"role": "user", "content": PROBE_PROMPT},),
        temperature=0.0,
        max_tokens=120,
        seed=0,
        schema=PROBE_SCHEMA,
        schema_name="colours",
    )
    for mode in modes:
        if report.mode is not None:
            report.modes.append(ModeOutcome(mode, "not tried"))
            continue
        status, _, payload, seconds = await state.chat(body_for(request, mode))
        outcome = ModeOutcome(mode, "failed")
        if status == 200 and is_completion(payload):
            try:
                reply = ChatResponse.from_openai(payload, seconds)
            except (ValueError, KeyError, IndexError, TypeError) as error:
                outcome.detail = f"unreadable reply ({error})"
            else:
                if conforms(reply.text, PROBE_SCHEMA):
                    outcome.state, outcome.detail = "takes", f"{seconds:.1f} s"
                    report.mode = mode
                elif reply.truncated:
                    outcome.state = "cut off"
                    outcome.detail = "the reply reached max_tokens before the JSON ended"
                else:
                    outcome.state = "ignored"
                    outcome.detail = f"the reply does not follow the schema: {_brief(reply.text)}"
        elif mode != "prompt" and is_refusal(status, error_message(payload), payload):
            outcome.state, outcome.detail = "refused", f"HTTP {status}: {_brief(payload)}"
        else:
            outcome.detail = f"HTTP {status}: {_brief(payload)}"
        report.modes.append(outcome)
    tried = [o for o in report.modes if o.state != "not tried"]
    if report.mode is not None:
        report.add("structured output", "ok", f"{report.mode}: a run asks for JSON this way")
    else:
        report.add("structured output", "fail", "no way of asking for JSON works")
    for outcome in tried:
        state = "ok" if outcome.state == "takes" else "warn"
        report.add(f"  {outcome.mode}", state, f"{outcome.state}: {outcome.detail}".rstrip(": "))
    if report.mode is not None:
        return
    first = tried[0] if tried else ModeOutcome(modes[0], "failed")
    if len(modes) == 1:
        report.problem = (
            f"the server does not take structured output as {first.mode} ({first.state}:"
            f" {one_line(first.detail, 120)}); leave --structured-output at auto to let glan"
            " find a way it takes"
        )
    else:
        states = ", ".join(f"{o.mode} {o.state}" for o in tried)
        report.problem = (
            f"no way of asking for JSON gave a reply of a tiny schema's shape ({states}); a run"
            " would fail its subjects and syllabi: try a larger model"
        )


def _model_finding(report: ProbeReport, payload: Any) -> None:
    model = report.model
    if report.listed is None:
        report.add("model", "warn", f"'{model}' answered; the server lists no models to check")
    elif model in report.listed:
        report.add("model", "ok", f"'{model}' is listed")
    else:
        served = payload.get("model") if isinstance(payload, dict) else None
        report.add(
            "model",
            "warn",
            f"'{model}' is not in /models ({', '.join(report.listed[:5]) or 'none'}), yet the"
            f" server answered{f' as {served!r}' if served else ''}: llama.cpp and TGI serve their"
            " one model under any name. Check the name if you meant another model",
        )


def _key_problem(base_url: str, status: int, payload: Any) -> str:
    return (
        f"the server at {base_url} rejected the API key (HTTP {status}: {_brief(payload)});"
        " check OPENAI_API_KEY or --api-key"
    )


def _model_problem(model: str, listed: list[str] | None, why: str) -> str:
    known = f"; it serves: {', '.join(listed[:10])}" if listed else ""
    return f"the server has no model '{model}' ({why}){known}; check --model"


def _brief(payload: Any) -> str:
    if isinstance(payload, str) and not payload.lstrip().startswith("<"):
        return one_line(payload, 160)
    message = error_message(payload) if isinstance(payload, dict) else ""
    return one_line(message, 160) if message else describe_body(payload)
