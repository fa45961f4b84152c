"""Getting a pydantic object out of a reply, whether or not the server enforced the schema."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from glan.llm.errors import ParseError
from glan.llm.types import ChatRequest

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)\n?```", re.DOTALL)
SCHEMA_MARKER = "Reply with JSON matching this JSON Schema"
# strict=False: a control character (a raw newline) inside a string is taken as it is. Servers
# that constrain decoding by a grammar (llama.cpp's GBNF) let them through.
_DECODER = json.JSONDecoder(strict=False)

# How a request asks for JSON matching a schema, in the order glan tries them (see negotiation):
Mode = Literal["json_schema", "json_object+schema", "json+value", "prompt"]
MODES: tuple[Mode, ...] = get_args(Mode)
# json_schema:        {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
#                     OpenAI, Azure OpenAI, vLLM, SGLang, Ollama, LM Studio
# json_object+schema: {"type": "json_object", "schema": S}   llama-cpp-python (grammar from S)
# json+value:         {"type": "json", "value": S}           Hugging Face TGI
# prompt:             no response_format; the schema is described in the last user message


def response_format(mode: Mode, schema: dict[str, Any], name: str | None) -> dict[str, Any] | None:
    """The ``response_format`` of a request in ``mode`` (None: the prompt carries the schema)."""
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name or "reply", "schema": schema, "strict": True},
        }
    if mode == "json_object+schema":
        return {"type": "json_object", "schema": grammar_schema(schema)}
    if mode == "json+value":
        return {"type": "json", "value": grammar_schema(schema)}
    return None


def grammar_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema for a server that turns it into a grammar (llama.cpp, TGI): every list needs an
    item and every string a character. Such a server writes exactly what the schema allows, so an
    empty list is a reply the stage's validator refuses (no class session, no key concept), which
    a small model then repeats turn after turn. (OpenAI's strict mode has rejected minItems, so
    ``json_schema`` gets the schema as it is; the request's key is the same in every mode.)"""
    return _tightened(schema)


def _tightened(node: Any) -> Any:
    if isinstance(node, list):
        return [_tightened(value) for value in node]
    if not isinstance(node, dict):
        return node
    tight = {key: _tightened(value) for key, value in node.items()}
    if tight.get("type") == "array":
        tight.setdefault("minItems", 1)
    elif tight.get("type") == "string" and "enum" not in tight:
        tight.setdefault("minLength", 1)
    return tight


def body_for(request: ChatRequest, mode: Mode) -> dict[str, Any]:
    """The JSON body of ``request`` with its schema asked for in ``mode``."""
    if request.schema is None:
        return request.body(response_format=False)
    if mode == "prompt":
        return schema_in_prompt(request).body(response_format=False)
    body = request.body(response_format=False)
    body["response_format"] = response_format(mode, request.schema, request.schema_name)
    return body


def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The schema sent as ``response_format``: closed objects, as OpenAI's strict mode requires."""
    schema = model.model_json_schema()
    _close_objects(schema)
    return schema


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object":
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


def schema_in_prompt(request: ChatRequest) -> ChatRequest:
    """For servers without ``response_format``: the schema goes into the last user message."""
    assert request.schema is not None
    *head, last = request.messages
    instruction = (
        f"\n\n{SCHEMA_MARKER}, and nothing else:\n```json\n"
        f"{json.dumps(request.schema, ensure_ascii=False)}\n```"
    )
    return replace(
        request, messages=(*head, {"role": last["role"], "content": last["content"] + instruction})
    )


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole reply, a fenced block, or the first balanced object."""
    stripped = text.strip()
    try:
        return _loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return _loads(block)
        except ValueError:
            continue
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict | list):
            return value
    raise ParseError("the reply holds no valid JSON")


def _loads(text: str) -> Any:
    """``json.loads``, then again accepting control characters inside strings."""
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text, strict=False)


def conforms(text: str, schema: dict[str, Any]) -> bool:
    """Whether a reply holds JSON of the schema's shape (types, required keys, no unknown keys
    where the schema closes an object): what a server that enforced the schema returns. Used to
    tell a server that honours a mode from one that accepts it and ignores it (Ollama, vLLM and
    LiteLLM drop what they do not know without a word)."""
    try:
        value = extract_json(text)
    except ParseError:
        return False
    return _shaped(value, schema, schema.get("$defs") or schema.get("definitions") or {}, 0)


_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}


def _shaped(value: Any, schema: Any, defs: dict[str, Any], depth: int) -> bool:
    if not isinstance(schema, dict) or depth > 32:
        return True
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _shaped(value, defs.get(ref.rsplit("/", 1)[-1], {}), defs, depth + 1)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        return any(_shaped(value, branch, defs, depth + 1) for branch in branches)
    kinds = schema.get("type")
    if isinstance(kinds, str):
        kinds = [kinds]
    if isinstance(kinds, list) and kinds:
        wanted = tuple(t for k in kinds for t in _flat(_TYPES.get(k, object)))
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        if any(key not in value for key in schema.get("required") or ()):
            return False
        if schema.get("additionalProperties") is False and any(k not in properties for k in value):
            return False
        return all(
            _shaped(value[k], properties[k], defs, depth + 1) for k in value if k in properties
        )
    if isinstance(value, list):
        items = schema.get("items")
        return all(_shaped(item, items, defs, depth + 1) for item in value)
    return True


def _flat(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_reply(text: str, model: type[M]) -> M:
    """Validate a reply; a ParseError says briefly what is wrong, for the repair turn."""
    data = extract_json(text)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in error.errors()[:5]
        )
        raise ParseError(f"the JSON does not match the schema: {problems}") from None
