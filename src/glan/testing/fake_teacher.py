"""A fake OpenAI-compatible teacher: a real HTTP server on 127.0.0.1 for tests and benchmarks.

The server runs on its own event loop in a background thread, so synchronous tests, async tests
and subprocesses can all reach it over real HTTP. A reply is a pure function of the seed and
the canonical JSON of the request body; structured requests get documents that validate against
their JSON Schema. Like vLLM's automatic prefix caching, it remembers the prompts it answered in
blocks and reports the leading blocks it had seen as ``usage.prompt_tokens_details.cached_tokens``
(``prefix_cache=False`` reports none). Faults (429, 5xx, timeouts, dropped connections, broken or
truncated replies) can be scripted, drawn at random rates, or pinned to requests that contain a
given text; so can a canned reply (``reply_with``: a refusal, say).

Standalone: ``python -m glan.testing.fake_teacher --port 8000 --latency 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import random
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import orjson
from aiohttp import web

from glan.testing.fake_batch import FakeBatchAPI

Fault = Literal["429", "500", "503", "timeout", "disconnect", "malformed", "truncated"]
ResponseFormatMode = Literal["honour", "ignore", "reject"]
# Whose spelling of structured output the server takes (and how it refuses the others):
# openai: {"type": "json_schema", "json_schema": {"schema": S}}; other types are ignored silently
#   (as Ollama and vLLM do), and "reject" mode refuses json_schema with a 400.
# llama-cpp: {"type": "json_object", "schema": S}; any type but text/json_object is HTTP 500 with
#   a pydantic literal_error, as llama-cpp-python 0.3.36 answers.
# tgi: {"type": "json" | "json_object", "value": S}; anything else is HTTP 422 in plain text
#   ("Failed to deserialize the JSON body ... missing field `value`"), as TGI answers.
Dialect = Literal["openai", "llama-cpp", "tgi"]
FAULTS: frozenset[str] = frozenset(get_args(Fault))
RESPONSE_FORMAT_MODES: frozenset[str] = frozenset(get_args(ResponseFormatMode))
DIALECTS: frozenset[str] = frozenset(get_args(Dialect))
MODEL_ID = "fake-model"

_MAX_BODY = 64 * 1024 * 1024  # aiohttp's 1 MiB default would refuse long prompts
_SHUTDOWN_GRACE = 0.1  # stop() must not wait for handlers sleeping through a "timeout" fault
_FAULT_ERRORS: dict[str, tuple[int, str, str, str | None]] = {
    "429": (
        429,
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    "500": (
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    "503": (
        503,
        "The engine is currently overloaded, please try again later.",
        "server_error",
        None,
    ),
}

# -- words ----------------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ADJECTIVES = _words(
    "thermal quantum coupled linear stochastic classical modern comparative applied digital "
    "ancient urban molecular cellular statistical organic historical computational ethical "
    "economic ecological structural cognitive financial regional experimental theoretical "
    "nonlinear political cultural medieval marine spatial social industrial visual acoustic "
    "numerical global rural"
)
_SINGULARS = _words(
    "dynamics theory design policy memory energy structure analysis geometry ecology history "
    "ethics reasoning modelling computation evolution measurement optimization inference "
    "governance literacy chemistry acoustics mechanics symmetry control finance logistics "
    "planning translation"
)
_PLURALS = _words(
    "oscillators networks markets languages structures models equations cultures signals "
    "fields populations policies memories algorithms circuits materials landscapes narratives "
    "institutions reactions sequences patterns archives machines graphs proofs contracts "
    "textures harvests telescopes rivers cities cells crystals proteins engines voters forests "
    "songs ledgers"
)
_VERBS = _words(
    "shape explain constrain reveal connect support transform measure describe influence "
    "balance reflect"
)
_LEADS = ("foundations of", "introduction to", "topics in", "principles of", "methods in")
_CONNECTIVES = ("", "", "in practice, ", "as a result, ", "for example, ", "moreover, ")
_PHRASES = (
    "{a} {s} of {b} {p}",
    "{a} {s} in {p}",
    "{s} and {t} in {a} {p}",
    "{a} {p} and their {s}",
    "{lead} {a} {s}",
)
# at most 15 words each, which keeps prose under 200 words (see _prose)
_SENTENCES = (
    "{c}the {a} {s} of {p} {v}s {b} {q}.",
    "{a} {p} {v} the {s} of {q}.",
    "this {s} {v}s how {a} {p} {w} {t}.",
    "{c}in {a} {s}, {p} {v} {b} {q} and {w} their {t}.",
)
_INTROS = (
    "Here is the JSON you asked for:",
    "Sure! Below is the requested data.",
    "Certainly. The result, following the schema:",
    "Of course, here it is:",
)
_OUTROS = (
    "Let me know if you would like any changes.",
    "I hope this helps!",
    "Feel free to ask for more detail on any entry.",
    "",
)


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _phrase(rng: random.Random) -> str:
    """A short title-like phrase, e.g. "Thermal dynamics of coupled oscillators"."""
    c = rng.choice
    text = c(_PHRASES).format(
        a=c(_ADJECTIVES),
        b=c(_ADJECTIVES),
        s=c(_SINGULARS),
        t=c(_SINGULARS),
        p=c(_PLURALS),
        lead=c(_LEADS),
    )
    return _capitalized(text)


def _sentence(rng: random.Random) -> str:
    c = rng.choice
    text = c(_SENTENCES).format(
        c=c(_CONNECTIVES),
        a=c(_ADJECTIVES),
        b=c(_ADJECTIVES),
        s=c(_SINGULARS),
        t=c(_SINGULARS),
        p=c(_PLURALS),
        q=c(_PLURALS),
        v=c(_VERBS),
        w=c(_VERBS),
    )
    return _capitalized(text)


def _prose(rng: random.Random) -> str:
    """40 to 200 words in paragraphs of four sentences."""
    target = rng.randint(40, 185)  # the last sentence may add up to 15 words
    sentences: list[str] = []
    words = 0
    while words < target:
        sentence = _sentence(rng)
        sentences.append(sentence)
        words += sentence.count(" ") + 1
    return "\n\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4))


# -- documents from JSON Schema -------------------------------------------------------------------


def _date(rng: random.Random) -> str:
    return f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


# pydantic parses these formats strictly (datetime, date, time, EmailStr, HttpUrl, UUID)
_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date": _date,
    "time": _time,
    "date-time": lambda rng: f"{_date(rng)}T{_time(rng)}Z",
    "email": lambda rng: f"{rng.choice(_ADJECTIVES)}.{rng.choice(_PLURALS)}@example.com",
    "uri": lambda rng: f"https://example.com/{rng.choice(_SINGULARS)}/{rng.randint(1, 99999)}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
}


def _shifted(bound: float | None, step: float) -> float | None:
    return None if bound is None else bound + step


class _DocumentFaker:
    """Builds one JSON value that validates against a JSON Schema (the subset pydantic v2 emits).

    ``pattern`` and ``multipleOf`` are not honoured; every declared property is filled.
    """

    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self._root = root
        self._rng = rng
        self._used: set[str] = set()  # the app deduplicates names: strings must all differ
        self._expanding: list[str] = []  # $refs being expanded, to notice recursion
        self._shrink = 0  # inside a recursive $ref: emit the smallest value, or never finish

    def value(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return self._string({})  # a boolean schema: anything goes
        if "$ref" in node:
            return self._ref(node["$ref"])
        if "const" in node:
            return node["const"]
        if node.get("enum"):
            return self._rng.choice(node["enum"])
        for key in ("anyOf", "oneOf"):
            if node.get(key):
                return self.value(self._branch(node[key]))
        if node.get("allOf"):
            return self.value(self._merged(node["allOf"]))
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in node else "array" if "items" in node else "string"
        match kind:
            case "object":
                return self._object(node)
            case "array":
                return self._array(node)
            case "integer" | "number":
                return self._number(node, integer=kind == "integer")
            case "boolean":
                return self._rng.random() < 0.5
            case "null":
                return None
            case _:
                return self._string(node)

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ValueError(f"only local $refs are supported, not {ref!r}")
        node: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _ref(self, ref: str) -> Any:
        recursive = ref in self._expanding
        self._expanding.append(ref)
        self._shrink += recursive
        try:
            return self.value(self._resolve(ref))
        finally:
            self._expanding.pop()
            self._shrink -= recursive

    def _branch(self, branches: list[Any]) -> Any:
        solid = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        if not solid or (self._shrink and len(solid) < len(branches)):
            return {"type": "null"}
        return solid[0]

    def _merged(self, branches: list[Any]) -> dict[str, Any]:
        if len(branches) == 1:  # pydantic's ``allOf: [{"$ref": ...}]``: keep recursion tracking
            return branches[0]
        merged: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for branch in branches:
            resolved = self._resolve(branch["$ref"]) if "$ref" in branch else branch
            merged.update(resolved)
            properties.update(resolved.get("properties", {}))
        merged["properties"] = properties
        return merged

    def _count(self, node: dict[str, Any], low_key: str, high_key: str) -> int:
        low, high = node.get(low_key), node.get(high_key)
        if self._shrink:
            return low or 0
        if low is None and high is None:
            return self._rng.randint(3, 6)
        if high is None:
            return self._rng.randint(low, low + 4)
        if low is None:
            low = min(3, high)
        return self._rng.randint(low, max(low, high))

    def _object(self, node: dict[str, Any]) -> dict[str, Any]:
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties")
        if not properties and isinstance(extra, dict):  # dict[str, X]
            count = self._count(node, "minProperties", "maxProperties")
            return {self._string({}): self.value(extra) for _ in range(count)}
        # Filled in sorted order, so the document depends only on the canonical request JSON;
        # emitted in schema order, as a model would write it.
        document = dict.fromkeys(properties)
        for name in sorted(properties):
            document[name] = self.value(properties[name])
        return document

    def _array(self, node: dict[str, Any]) -> list[Any]:
        if "prefixItems" in node:  # tuple[...]
            return [self.value(item) for item in node["prefixItems"]]
        items = node.get("items", {})
        return [self.value(items) for _ in range(self._count(node, "minItems", "maxItems"))]

    def _number(self, node: dict[str, Any], *, integer: bool) -> int | float:
        # exclusive bounds move one step inwards; the grid is coarse but so is the data
        step = 1 if integer else 0.01
        lows = (node.get("minimum"), _shifted(node.get("exclusiveMinimum"), step))
        highs = (node.get("maximum"), _shifted(node.get("exclusiveMaximum"), -step))
        low = max((b for b in lows if b is not None), default=None)
        high = min((b for b in highs if b is not None), default=None)
        if low is None:
            low = 1 if high is None else min(1, high)
        high = max(low, low + 99 if high is None else high)
        if integer:
            floor = math.ceil(low)
            return self._rng.randint(floor, max(floor, math.floor(high)))
        return min(high, max(low, round(self._rng.uniform(low, high), 2)))

    def _string(self, node: dict[str, Any]) -> str:
        formatted = _FORMATS.get(node.get("format", ""))
        if formatted is not None:
            return formatted(self._rng)
        low, high = node.get("minLength", 0), node.get("maxLength")
        for _ in range(20):  # a short maxLength makes clashes likely; give up on distinctness
            text = _phrase(self._rng)
            while len(text) < low:
                text += " " + self._rng.choice(_PLURALS)
            if high is not None:
                cut = text[:high]
                text = cut.rstrip() if len(cut.rstrip()) >= low else cut
            if text not in self._used:
                break
        self._used.add(text)
        return text


def fake_document(schema: dict[str, Any], seed: int = 0) -> Any:
    """A JSON value valid against ``schema``, the same for the same (schema, seed)."""
    return _DocumentFaker(schema, random.Random(seed)).value(schema)


# -- replies --------------------------------------------------------------------------------------

_PROMPT_SCHEMA = re.compile(r"JSON Schema.*?```json[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Reply:
    content: str
    finish_reason: str = "stop"
    document: str | None = None  # the JSON text inside ``content``, for structured replies

    def malformed(self) -> _Reply:
        if self.document is None:
            return _Reply("")
        # a proper prefix of a JSON object or array never parses
        return _Reply(self.document[: max(1, len(self.document) // 2)])

    def truncated(self) -> _Reply:
        return _Reply(self.content[: len(self.content) // 2], "length")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(content: Any) -> str:
    """The text of a message's content, a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(_dict(part).get("text", "")) for part in content)
    return ""


def _schema_in_prompt(messages: Any) -> dict[str, Any] | None:
    """The schema a client without ``response_format`` put in the last user message."""
    users = [m for m in messages or () if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None
    found = _PROMPT_SCHEMA.search(_text(users[-1].get("content")))
    if found is None:
        return None
    try:
        schema = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return schema if isinstance(schema, dict) else None


def _chatty(schema: dict[str, Any], rng: random.Random) -> _Reply:
    """What a model that follows instructions, without a server enforcing the schema, writes."""
    document = orjson.dumps(_DocumentFaker(schema, rng).value(schema), option=orjson.OPT_INDENT_2)
    text = document.decode()
    outro = rng.choice(_OUTROS)
    content = f"{rng.choice(_INTROS)}\n\n```json\n{text}\n```" + (f"\n\n{outro}" if outro else "")
    return _Reply(content, document=text)


def _structured(document: Any) -> _Reply:
    text = orjson.dumps(document).decode()
    return _Reply(text, document=text)


def _limited(prose: str, body: dict[str, Any]) -> _Reply:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0 and len(prose) > limit * 4:
        return _Reply(prose[: limit * 4], "length")
    return _Reply(prose)


def _enforced_schema(response_format: dict[str, Any], dialect: Dialect) -> dict[str, Any] | None:
    """The schema a server of ``dialect`` constrains the reply by, as ``response_format`` asks."""
    kind = response_format.get("type")
    if dialect == "openai" and kind == "json_schema":
        return _dict(_dict(response_format.get("json_schema")).get("schema"))
    if dialect == "llama-cpp" and kind == "json_object" and "schema" in response_format:
        return _dict(response_format["schema"])
    if dialect == "tgi" and kind in ("json", "json_object") and "value" in response_format:
        return _dict(response_format["value"])
    return None


_LLAMA_CPP_REFUSAL = (
    "1 validation error:\n  {{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'),"
    " 'msg': \"Input should be 'text' or 'json_object'\", 'input': '{kind}', 'ctx': {{'expected':"
    " \"'text' or 'json_object'\"}}}}\n\n  File \"llama_cpp/server/app.py\", line 376, in"
    " create_chat_completion\n    POST /v1/chat/completions"
)
_TGI_REFUSAL = (
    "Failed to deserialize the JSON body into the target type: response_format: missing field"
    " `value` at line 1 column 168"
)


def _dialect_refusal(body: dict[str, Any], dialect: Dialect) -> web.Response | None:
    """How a server of ``dialect`` refuses a ``response_format`` it does not take."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if dialect == "llama-cpp" and kind not in ("text", "json_object"):
        return _error(500, _LLAMA_CPP_REFUSAL.format(kind=kind), "internal_server_error")
    if dialect == "tgi" and kind != "text" and "value" not in response_format:
        return web.Response(status=422, text=_TGI_REFUSAL)
    return None


def _compose(
    body: dict[str, Any], seed: int, *, enforce_schema: bool, dialect: Dialect = "openai"
) -> _Reply:
    """The reply to ``body``; ``enforce_schema=False`` answers a structured request in prose."""
    rng = random.Random(seed)
    response_format = _dict(body.get("response_format"))
    kind = response_format.get("type")
    schema = _enforced_schema(response_format, dialect)
    if schema is not None:
        if enforce_schema:
            return _structured(_DocumentFaker(schema, rng).value(schema))
        return _chatty(schema, rng)
    schema = _schema_in_prompt(body.get("messages"))
    if schema is not None:
        return _chatty(schema, rng)
    if kind == "json_object":
        return _structured({"answer": _prose(rng)})
    return _limited(_prose(rng), body)


def _digest(seed: int, canonical: bytes) -> int:
    hasher = hashlib.blake2b(b"%d\n" % seed, digest_size=8)
    hasher.update(canonical)
    return int.from_bytes(hasher.digest())


def _tokens(chars: int) -> int:
    return -(-chars // 4)


class PrefixCache:
    """What a server with automatic prefix caching keeps (vLLM, SGLang; OpenAI on its side): a
    prompt is cut in blocks, each known by the model and everything up to its end, so a prompt
    whose first blocks were seen before reads them from the cache. The least recently used
    blocks are forgotten beyond ``capacity``."""

    BLOCK = 64  # characters, about 16 tokens: vLLM's default block size

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def read(self, body: dict[str, Any]) -> int:
        """How many characters of the prompt of ``body`` were cached; remembers its blocks."""
        text = _prompt_text(body.get("messages"))
        hasher = hashlib.blake2b(str(body.get("model")).encode(), digest_size=12)
        cached, hit = 0, True
        for start in range(0, len(text) - self.BLOCK + 1, self.BLOCK):  # whole blocks only
            hasher.update(text[start : start + self.BLOCK].encode())
            key = hasher.copy().digest()
            if hit and key in self._blocks:
                cached += self.BLOCK
                self._blocks.move_to_end(key)
                continue
            hit = False
            self._blocks[key] = None
            if len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        return cached


def _prompt_text(messages: Any) -> str:
    return "".join(
        f"<{m.get('role')}>{_text(m.get('content'))}" for m in messages or () if isinstance(m, dict)
    )


def _completion(
    body: dict[str, Any], reply: _Reply, digest: int, cached_chars: int = 0
) -> dict[str, Any]:
    messages = body.get("messages")
    prompt_chars = sum(len(_text(m.get("content"))) for m in messages or () if isinstance(m, dict))
    prompt_tokens, completion_tokens = _tokens(prompt_chars), _tokens(len(reply.content))
    cached_tokens = min(prompt_tokens, cached_chars // 4)
    model = body.get("model")
    return {
        "id": f"chatcmpl-{digest:016x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) else MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        },
    }


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error}),
        content_type="application/json",
        headers=headers,
    )


# -- faults ---------------------------------------------------------------------------------------


def _checked(fault: str) -> Fault:
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
    return fault  # type: ignore[return-value]


@dataclass
class _Script:
    match: str | None
    faults: deque[Fault]


@dataclass
class _Rates:
    rates: tuple[tuple[Fault, float], ...]
    match: str | None
    rng: random.Random

    def draw(self) -> Fault | None:
        point = self.rng.random()
        for fault, probability in self.rates:
            point -= probability
            if point < 0:
                return fault
        return None


class _Settings(NamedTuple):
    seed: int
    latency: float
    mode: ResponseFormatMode
    dialect: Dialect
    retry_after: str
    timeout_sleep: float
    api_key: str | None


# -- server ---------------------------------------------------------------------------------------


class FakeTeacher:
    """An OpenAI-compatible chat completions server on a free local port, for tests.

    Settings (``latency``, ``response_format_mode``, ``dialect``, ``retry_after``,
    ``timeout_sleep``, ``seed``, ``api_key``) may be changed while it runs; each request reads
    them once.
    ``match`` texts are looked for in the request body as compact JSON with sorted keys
    (non-ASCII characters unescaped), so a match containing quotes or newlines must be written
    JSON-escaped. ``record=False`` keeps no requests, for long benchmarks.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        latency: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        response_format_mode: ResponseFormatMode = "honour",
        dialect: Dialect = "openai",
        retry_after: str = "1",
        timeout_sleep: float = 30.0,
        record: bool = True,
        prefix_cache: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self.api_key = api_key
        self.latency = latency
        self.seed = seed
        self.host = host
        self.port = port
        self.response_format_mode = response_format_mode
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {sorted(DIALECTS)}")
        self.dialect: Dialect = dialect
        self.retry_after = retry_after
        self.timeout_sleep = timeout_sleep
        self.record = record
        self.prefix_cache = PrefixCache() if prefix_cache else None
        self._bodies: list[dict[str, Any]] = []
        self._arrivals: list[float] = []  # time.monotonic() of each recorded request
        self._scripts: list[_Script] = []
        self._replies: list[tuple[str, Any]] = []
        self._rates: _Rates | None = None
        self._always: dict[str, Fault] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        # The provider batch API (files and batches endpoints) on the same port; see fake_batch.
        self.batch = FakeBatchAPI(self.reply, lambda: self._settings().api_key)

    @property
    def response_format_mode(self) -> ResponseFormatMode:
        return self._mode

    @response_format_mode.setter
    def response_format_mode(self, mode: ResponseFormatMode) -> None:
        if mode not in RESPONSE_FORMAT_MODES:
            raise ValueError(f"response_format_mode must be one of {sorted(RESPONSE_FORMAT_MODES)}")
        with self._lock:
            self._mode = mode

    # -- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        if self._base_url is None:
            raise RuntimeError("the fake teacher is not running; call start()")
        return self._base_url

    def start(self) -> FakeTeacher:
        if self._thread is not None:
            raise RuntimeError("the fake teacher is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="fake-teacher", daemon=True)
        thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            raise
        self._loop, self._thread = loop, thread
        self._base_url = f"http://{self.host}:{port}/v1"
        return self

    def stop(self) -> None:
        """Stop serving; handlers still running (a "timeout" fault) are cancelled."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        try:
            if runner is not None:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            self._loop = self._thread = self._runner = self._base_url = None

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> int:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self.batch.add_routes(app)
        # handler_cancellation: a client that gives up cancels its handler's sleep
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return runner.addresses[0][1]

    # -- faults

    def script(self, faults: Sequence[Fault], match: str | None = None) -> None:
        """The next requests (containing ``match``, if given) get these faults, one each.

        Scripts queue up: a request takes its fault from the first unfinished script it matches.
        """
        queue = deque(_checked(fault) for fault in faults)
        if queue:
            with self._lock:
                self._scripts.append(_Script(match, queue))

    def set_fault_rates(self, rates: Mapping[Fault, float], match: str | None = None) -> None:
        """Each request (containing ``match``, if given) draws a fault with these probabilities.

        Replaces earlier rates; the draws restart from ``seed``, so a sequential run repeats.
        """
        pairs = tuple((_checked(fault), float(p)) for fault, p in rates.items())
        if any(p < 0 for _, p in pairs) or sum(p for _, p in pairs) > 1 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1, not {rates}")
        with self._lock:
            self._rates = _Rates(pairs, match, random.Random(self.seed)) if pairs else None

    def always_fail(self, match: str, fault: Fault = "500") -> None:
        """Every request containing ``match`` gets ``fault``; this wins over scripts and rates."""
        checked = _checked(fault)
        with self._lock:
            self._always[match] = checked

    def reply_with(self, match: str, reply: Any) -> None:
        """Requests containing ``match`` get ``reply``: a JSON document answers those that ask
        for JSON (a schema in ``response_format`` or in the prompt), a text answers the others.
        Rules are tried in the order they were given (put the narrow ones first); faults still
        come first. For tests that need a teacher to be wrong on purpose."""
        with self._lock:
            self._replies.append((match, reply))

    def _reply_for(self, text: str, body: dict[str, Any]) -> _Reply | None:
        kind = _dict(body.get("response_format")).get("type")
        wants_json = (
            kind not in (None, "text") or _schema_in_prompt(body.get("messages")) is not None
        )
        with self._lock:
            reply = next(
                (
                    r
                    for match, r in self._replies
                    if match in text and isinstance(r, str) != wants_json
                ),
                None,
            )
        if reply is None:
            return None
        return _Reply(reply) if isinstance(reply, str) else _structured(reply)

    def _draw_fault(self, text: str) -> Fault | None:
        with self._lock:
            for match, fault in self._always.items():
                if match in text:
                    return fault
            for script in self._scripts:
                if script.match is None or script.match in text:
                    fault = script.faults.popleft()
                    if not script.faults:
                        self._scripts.remove(script)
                    return fault
            rates = self._rates
            if rates is not None and (rates.match is None or rates.match in text):
                return rates.draw()
        return None

    # -- recording

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Request bodies received, faulted and unauthorized ones included, in arrival order."""
        with self._lock:
            return list(self._bodies)

    @property
    def arrivals(self) -> list[tuple[float, dict[str, Any]]]:
        """(time.monotonic() on arrival, body) of each recorded request, in arrival order."""
        with self._lock:
            return list(zip(self._arrivals, self._bodies, strict=True))

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._bodies)

    def count_matching(self, substring: str) -> int:
        """How many recorded requests contain ``substring`` (matched as ``match`` is)."""
        return sum(substring in _canonical(body).decode() for body in self.requests)

    def reset(self) -> None:
        """Forget recorded requests (batch API recordings too), scripts, rates, always_fail rules
        and canned replies; settings stay."""
        with self._lock:
            self._bodies.clear()
            self._replies.clear()
            self._arrivals.clear()
            self._scripts.clear()
            self._rates = None
            self._always.clear()
        self.batch.reset()

    # -- handlers

    def _settings(self) -> _Settings:
        with self._lock:
            return _Settings(
                self.seed,
                self.latency,
                self._mode,
                self.dialect,
                self.retry_after,
                self.timeout_sleep,
                self.api_key,
            )

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, JSON) that the chat endpoint answers to ``body`` when it draws no fault."""
        settings = self._settings()
        wants_schema = _dict(body.get("response_format")).get("type") == "json_schema"
        if wants_schema and settings.mode == "reject":
            error = {
                "message": "'response_format' of type 'json_schema' is not supported",
                "type": "invalid_request_error",
            }
            return 400, {"error": error}
        canonical = _canonical(body)
        digest = _digest(settings.seed, canonical)
        reply = self._reply_for(canonical.decode(), body) or _compose(
            body, digest, enforce_schema=settings.mode == "honour", dialect=settings.dialect
        )
        return 200, _completion(body, reply, digest, self._cached_chars(body))

    async def _models(self, request: web.Request) -> web.Response:
        if not _authorized(request, self._settings().api_key):
            return _unauthorized()
        models = {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]}
        return web.Response(body=orjson.dumps(models), content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "The request body is not a JSON object.", "invalid_request_error")
        if self.record:
            with self._lock:
                self._bodies.append(body)
                self._arrivals.append(time.monotonic())
        settings = self._settings()
        if not _authorized(request, settings.api_key):
            return _unauthorized()
        canonical = _canonical(body)
        fault = self._draw_fault(canonical.decode())
        if settings.latency > 0:
            await asyncio.sleep(settings.latency)
        if fault == "disconnect":
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never sent: aiohttp drops writes to a closed transport
        if fault in _FAULT_ERRORS:
            status, message, kind, code = _FAULT_ERRORS[fault]
            headers = {"Retry-After": settings.retry_after} if status == 429 else None
            return _error(status, message, kind, code, headers=headers)
        if fault == "timeout":
            await asyncio.sleep(settings.timeout_sleep)
        refusal = _dialect_refusal(body, settings.dialect)
        if refusal is not None:
            return refusal
        wants_schema = _dict(body.get("response_format")).get("type") == "json_schema"
        if wants_schema and settings.mode == "reject" and settings.dialect == "openai":
            return _error(
                400,
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported"
                " with this model.",
                "invalid_request_error",
                param="response_format",
            )
        digest = _digest(settings.seed, canonical)
        reply = self._reply_for(canonical.decode(), body) or _compose(
            body, digest, enforce_schema=settings.mode == "honour", dialect=settings.dialect
        )
        if fault == "malformed":
            reply = reply.malformed()
        elif fault == "truncated":
            reply = reply.truncated()
        return web.Response(
            body=orjson.dumps(_completion(body, reply, digest, self._cached_chars(body))),
            content_type="application/json",
        )

    def _cached_chars(self, body: dict[str, Any]) -> int:
        if self.prefix_cache is None:
            return 0
        with self._lock:
            return self.prefix_cache.read(body)


def _canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _authorized(request: web.Request, api_key: str | None) -> bool:
    return api_key is None or request.headers.get("Authorization") == f"Bearer {api_key}"


def _unauthorized() -> web.Response:
    return _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()
    # whatever the shutdown cut off is cancelled here, so that the loop closes without warnings
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


# -- command line ---------------------------------------------------------------------------------


def _rates(specs: Sequence[str], parser: argparse.ArgumentParser) -> dict[Fault, float]:
    rates: dict[Fault, float] = {}
    for spec in specs:
        fault, _, rate = spec.partition("=")
        try:
            rates[_checked(fault)] = float(rate)
        except ValueError as error:
            parser.error(f"--fault {spec!r}: {error}")
    return rates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m glan.testing.fake_teacher",
        description="Serve a fake OpenAI-compatible teacher until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    parser.add_argument(
        "--response-format-mode", choices=sorted(RESPONSE_FORMAT_MODES), default="honour"
    )
    parser.add_argument(
        "--dialect",
        choices=sorted(DIALECTS),
        default="openai",
        help="whose spelling of structured output to take (and how to refuse the others)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="FAULT=RATE",
        help=f"random fault rate, repeatable, e.g. 429=0.05; faults: {', '.join(sorted(FAULTS))}",
    )
    args = parser.parse_args(argv)
    teacher = FakeTeacher(
        args.api_key,
        latency=args.latency,
        seed=args.seed,
        host=args.host,
        port=args.port,
        response_format_mode=args.response_format_mode,
        dialect=args.dialect,
        record=False,  # a benchmark would otherwise keep every request in memory
    )
    teacher.set_fault_rates(_rates(args.fault, parser))
    # Ctrl-C may come as soon as the URL is out, while print() still holds the main thread.
    with teacher, contextlib.suppress(KeyboardInterrupt):
        print(teacher.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
