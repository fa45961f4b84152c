"""Pieces of the LLM layer that need no server: keys, JSON extraction, schemas."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from glan.ids import canonical_bytes, digest_id
from glan.llm.client import retry_after_seconds
from glan.llm.errors import ParseError
from glan.llm.structured import extract_json, json_schema_of, parse_reply, schema_in_prompt
from glan.llm.types import ChatRequest, unpack_request
from glan.stages.syllabus import Syllabus


def request(**changes) -> ChatRequest:
    values = {"model": "m", "messages": ({"role": "user", "content": "hi"},), "temperature": 1.0}
    values.update(changes)
    return ChatRequest(**values)


def test_key_is_the_content_address_of_what_was_asked():
    assert request().key == request().key
    assert request().key != request(temperature=0.5).key
    assert request().key != request(tag="query-1").key
    assert request().key != request(seed=3).key
    assert unpack_request(request(tag="x").packed()) == {"body": request().body(), "tag": "x"}


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '  {"a": 1}\n',
        'Sure! Here it is:\n```json\n{"a": 1}\n```\nAnything else?',
        '```\n{"a": 1}\n```',
        'The object {"a": 1} is what you asked for.',
    ],
)
def test_extract_json_finds_the_object(text):
    assert extract_json(text) == {"a": 1}


def test_extract_json_says_when_there_is_none():
    with pytest.raises(ParseError, match="no valid JSON"):
        extract_json('{"a": 1')


def test_parse_reply_names_the_bad_field():
    with pytest.raises(ParseError, match="sessions"):
        parse_reply('{"introduction": "x", "sessions": []}', Syllabus)


def test_schema_is_closed_for_strict_mode():
    class Item(BaseModel):
        name: str

    class Items(BaseModel):
        items: list[Item]

    schema = json_schema_of(Items)
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Item"]["additionalProperties"] is False


def test_schema_in_prompt_for_servers_without_response_format():
    r = request(schema={"type": "object"}, schema_name="x")
    moved = schema_in_prompt(r)
    assert "JSON Schema" in moved.messages[-1]["content"]
    assert "response_format" not in moved.body(response_format=False)
    assert moved.key != r.key  # the prompt differs, so does the key


def test_the_wire_bytes_are_the_canonical_body():
    r = request(tag="q-1", messages=({"role": "user", "content": 'é "quoted"'},))
    assert json.loads(r.wire) == r.body()
    assert r.wire == canonical_bytes(r.body())
    assert r.key == digest_id(canonical_bytes({"body": r.body(), "tag": "q-1"}))


def test_retry_after_reads_seconds_and_dates_and_ignores_the_rest():
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"Retry-After": "-3"}) == 0.0
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None
