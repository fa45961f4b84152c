"""Getting a pydantic object out of a reply, whether or not the server enforced the schema."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from glan.llm.errors import ParseError
from glan.llm.types import ChatRequest

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)\n?```", re.DOTALL)
SCHEMA_MARKER = "Reply with JSON matching this JSON Schema"


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
        return json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return json.loads(block)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict | list):
            return value
    raise ParseError("the reply holds no valid JSON")


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
