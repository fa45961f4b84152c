"""Which way of asking for structured output a server takes, found by trying.

Every OpenAI-compatible server spells "reply with JSON matching this schema" its own way (see
``structured.MODES``). With ``structured_output: auto`` a client tries the modes in a fixed order,
per model: ``json_schema`` (OpenAI, Azure, vLLM, SGLang, Ollama), ``json_object+schema``
(llama-cpp-python), ``json+value`` (TGI), then the schema in the prompt. It moves on

- when the server refuses the mode: a 4xx, or a 5xx whose body names the mode
  (llama-cpp-python answers ``json_schema`` with HTTP 500 and a pydantic ``literal_error``;
  TGI with 422 ``Failed to deserialize ... missing field `value```). The request is sent again in
  the next mode at once; no retry is spent and nobody waits;
- when, while the mode is not yet confirmed, a complete reply does not have the schema's shape:
  some servers accept what they do not know and ignore it (Ollama, vLLM's dropped fields,
  LiteLLM with ``drop_params``).

The first complete reply of the schema's shape confirms the mode; from then on a bad reply is just
a bad reply (the engine's repair turns deal with it). A confirmed mode is reported through
``on_learn`` so a run keeps it (in its store, ``MODES_META``) and a resume does not probe again.
A forced mode (``--structured-output json_schema``) is used alone: its refusal stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from glan.llm.structured import MODES, Mode

log = logging.getLogger(__name__)

# What --structured-output / structured_output take: auto, a mode, or an older name.
StructuredOutput = Literal[
    "auto", "json_schema", "json_object+schema", "json+value", "prompt", "response_format"
]
STRUCTURED_OUTPUT_VALUES: tuple[str, ...] = get_args(StructuredOutput)
ALIASES: dict[str, Mode] = {"response_format": "json_schema"}  # glan <= 0.1's name for it

MODES_META = "structured_modes"  # {base_url: {model: mode}} in a run's store


def forced_mode(value: str) -> Mode | None:
    """The mode ``value`` forces; None for auto."""
    if value == "auto":
        return None
    mode = ALIASES.get(value, value)
    if mode not in MODES:
        raise ValueError(f"unknown structured output mode {value!r}")
    return mode  # type: ignore[return-value]


@dataclass
class _State:
    index: int  # the mode in use, in MODES
    confirmed: bool  # a reply of the schema's shape came back in it (or it is forced/remembered)


class Negotiator:
    """The structured mode of each model of one endpoint."""

    def __init__(
        self,
        structured: str = "auto",
        known: Mapping[str, str] | None = None,
        on_learn: Callable[[str, Mode], None] | None = None,
    ) -> None:
        self.forced = forced_mode(structured)
        self._known = {m: v for m, v in (known or {}).items() if v in MODES}
        self._on_learn = on_learn
        self._states: dict[str, _State] = {}

    def _state(self, model: str) -> _State:
        state = self._states.get(model)
        if state is None:
            if self.forced is not None:
                state = _State(MODES.index(self.forced), True)
            elif model in self._known:
                state = _State(MODES.index(self._known[model]), True)  # type: ignore[arg-type]
            else:
                state = _State(0, False)
            self._states[model] = state
        return state

    def mode(self, model: str) -> Mode:
        """The mode to ask ``model`` in now."""
        return MODES[self._state(model).index]

    def confirmed(self, model: str) -> Mode | None:
        state = self._state(model)
        return MODES[state.index] if state.confirmed else None

    def refused(self, model: str, mode: Mode, why: str) -> bool:
        """The server refused ``mode``: True when another mode is to be tried (it is then the
        current one); False when the mode was forced."""
        if self.forced is not None:
            return False
        state = self._state(model)
        index = MODES.index(mode)
        if index == state.index and index + 1 < len(MODES):
            state.index += 1
            state.confirmed = False
            log.log(
                _level(state.index),
                "the server refused structured output as %s for %s (%s); trying %s",
                mode,
                model,
                why,
                MODES[state.index],
            )
        return state.index > index

    def ignored(self, model: str, mode: Mode) -> bool:
        """A complete reply in ``mode`` lacks the schema's shape: True when the request should be
        asked again in the mode now current (a later one)."""
        state = self._state(model)
        index = MODES.index(mode)
        if index < state.index:
            return True  # asked in a mode already left behind
        if state.confirmed or index + 1 >= len(MODES):
            return False
        state.index += 1
        log.log(
            _level(state.index),
            "the reply to structured output as %s for %s does not follow the schema (the server"
            " may ignore it); trying %s",
            mode,
            model,
            MODES[state.index],
        )
        return True

    def worked(self, model: str, mode: Mode) -> None:
        """A complete reply in ``mode`` has the schema's shape."""
        state = self._state(model)
        if state.confirmed or MODES.index(mode) != state.index:
            return
        state.confirmed = True
        log.info("structured output for %s: %s", model, mode)
        if self.forced is None and self._on_learn is not None:
            self._on_learn(model, mode)


def _level(index: int) -> int:
    """Moving on is how negotiation works (said with -v); ending with the schema in the prompt,
    which a model may not follow, is worth a warning."""
    return logging.WARNING if MODES[index] == "prompt" else logging.INFO


class Meta(Protocol):
    """Where a run keeps small values (``Store``)."""

    def get_meta(self, key: str) -> Any: ...

    def set_meta(self, key: str, value: Any) -> None: ...


def endpoint_key(base_url: str) -> str:
    return base_url.rstrip("/")


def stored_negotiator(structured: str, base_url: str, meta: Meta | None) -> Negotiator:
    """A negotiator that starts from the modes ``meta`` remembers for this endpoint, and
    remembers the modes it learns there."""
    if meta is None:
        return Negotiator(structured)
    endpoint = endpoint_key(base_url)
    known = (meta.get_meta(MODES_META) or {}).get(endpoint) or {}

    def learn(model: str, mode: Mode) -> None:
        saved = meta.get_meta(MODES_META) or {}
        saved.setdefault(endpoint, {})[model] = mode
        meta.set_meta(MODES_META, saved)

    return Negotiator(structured, known, learn)


# A 4xx or 5xx whose body names one of these is a refusal of the structured mode.
_REFUSAL_WORDS = (
    "response_format",
    "json_schema",
    "json_object",
    "literal_error",
    "deserialize",
    "grammar",
    "`value`",
    "schema",
)
_NOT_REFUSALS = frozenset({401, 403, 404, 408, 409, 425, 429})


def is_refusal(status: int, message: str, payload: Any = None) -> bool:
    """Whether an error answering a request sent with ``response_format`` refuses that mode:
    a 422 (the body did not fit the server's request type: TGI), or a 4xx/5xx naming
    ``response_format``, ``json_schema``, the type, ``value``, a literal_error or deserialize."""
    if status < 400 or status in _NOT_REFUSALS:
        return False
    if status == 422:
        return True
    text = message.lower()
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        text += " " + str(payload["error"].get("param") or "").lower()
    return any(word in text for word in _REFUSAL_WORDS)
