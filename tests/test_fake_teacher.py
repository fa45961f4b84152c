"""The fake teacher, spoken to over real HTTP as the client and the benchmarks will."""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from email.message import Message
from enum import StrEnum
from typing import Any, Literal

import aiohttp
import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, Field

from glan.testing.fake_teacher import FakeTeacher, fake_document

# A proxy from the environment must not see requests to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_FENCED = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
_SCHEMA_MARKER = "Reply with JSON matching this JSON Schema, and nothing else:"


class Level(StrEnum):
    INTRODUCTORY = "introductory"
    ADVANCED = "advanced"


class Subtopic(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=5, max_length=60)
    hours: int = Field(ge=1, le=40)


class Subject(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    level: Level
    kind: Literal["core", "elective"]
    note: str | None = None
    weight: float = Field(gt=0, lt=1)
    subtopics: list[Subtopic] = Field(min_length=2, max_length=4)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    discipline: str
    subjects: list[Subject] = Field(min_length=8, max_length=8)
    keywords: list[str]
    counts: dict[str, int]
    span: tuple[int, str]
    starts: date
    parent: Subject | None = None


class Node(BaseModel):
    name: str
    children: list[Node] = []


_LITERALS = {"introductory", "advanced", "core", "elective"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher() as teacher:
        yield teacher


@pytest.fixture
def teacher(server: FakeTeacher) -> FakeTeacher:
    server.reset()
    server.latency = 0.0
    server.response_format_mode = "honour"
    server.retry_after = "1"
    server.timeout_sleep = 30.0
    return server


def chat(text: str = "Explain how tides work.", **extra: Any) -> dict[str, Any]:
    return {"model": "teacher-x", "messages": [{"role": "user", "content": text}], **extra}


def schema_chat(model: type[BaseModel], text: str = "List the subjects.") -> dict[str, Any]:
    json_schema = {"name": model.__name__, "schema": model.model_json_schema(), "strict": True}
    return chat(text, response_format={"type": "json_schema", "json_schema": json_schema})


def post(
    teacher: FakeTeacher, body: dict[str, Any], *, key: str | None = None, timeout: float = 5.0
) -> tuple[int, Message, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"{teacher.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def content_of(payload: dict[str, Any]) -> str:
    return payload["choices"][0]["message"]["content"]


def finish_of(payload: dict[str, Any]) -> str:
    return payload["choices"][0]["finish_reason"]


def strings_in(value: Any) -> list[str]:
    """The string values in a document (not its keys)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def assert_valid(model: type[BaseModel], document: Any) -> None:
    jsonschema.Draft202012Validator(model.model_json_schema()).validate(document)
    model.model_validate(document)


# -- content


def test_prose_reply_has_the_openai_shape(teacher: FakeTeacher) -> None:
    status, _, payload = post(teacher, chat())
    assert status == 200
    assert payload["id"].startswith("chatcmpl-")
    assert payload["object"] == "chat.completion"
    assert payload["model"] == "teacher-x"
    choice = payload["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    text = content_of(payload)
    assert 40 <= len(text.split()) <= 200
    usage = payload["usage"]
    assert usage["completion_tokens"] == math.ceil(len(text) / 4)
    assert usage["prompt_tokens"] == math.ceil(len("Explain how tides work.") / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_replies_are_a_function_of_seed_and_canonical_body(teacher: FakeTeacher) -> None:
    body = chat(temperature=0.7)
    first = content_of(post(teacher, body)[2])
    reordered = dict(reversed(body.items()))
    assert content_of(post(teacher, reordered)[2]) == first
    assert content_of(post(teacher, chat("Explain the seasons.", temperature=0.7))[2]) != first
    with FakeTeacher(seed=1) as other:
        assert content_of(post(other, body)[2]) != first


def test_max_tokens_cuts_prose(teacher: FakeTeacher) -> None:
    payload = post(teacher, chat(max_tokens=10))[2]
    assert len(content_of(payload)) == 40
    assert finish_of(payload) == "length"


def test_models_endpoint(teacher: FakeTeacher) -> None:
    with _OPENER.open(f"{teacher.base_url}/models", timeout=5) as response:
        listing = json.loads(response.read())
    assert listing == {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}


@pytest.mark.parametrize("model", [Catalogue, Subject, Node])
def test_documents_validate_against_pydantic_schemas(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    for seed in range(25):
        assert_valid(model, fake_document(schema, seed))


def test_recursive_schema_stays_small() -> None:
    document = fake_document(Node.model_json_schema(), 3)
    assert all(child["children"] == [] for child in document["children"])


def test_hand_written_schema_edge_cases() -> None:
    schema = {
        "type": "object",
        "properties": {
            "maybe": {"type": ["integer", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 3},
            "short": {"type": "string", "maxLength": 4},
            "long": {"type": "string", "minLength": 80},
            "fixed": {"const": "v1"},
            "score": {"type": "number", "minimum": -1.5, "maximum": -1.0},
            "few": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        },
        "required": ["maybe", "short", "long", "fixed", "score", "few"],
        "additionalProperties": False,
    }
    for seed in range(25):
        jsonschema.Draft202012Validator(schema).validate(fake_document(schema, seed))


def test_schema_reply_validates_and_its_strings_differ(teacher: FakeTeacher) -> None:
    payload = post(teacher, schema_chat(Catalogue))[2]
    assert finish_of(payload) == "stop"
    document = json.loads(content_of(payload))
    assert_valid(Catalogue, document)
    assert len({subject["name"] for subject in document["subjects"]}) == 8
    strings = [s for s in strings_in(document) if s not in _LITERALS] + list(document["counts"])
    assert len(strings) == len(set(strings))


def test_ignore_mode_answers_with_fenced_json_in_prose(teacher: FakeTeacher) -> None:
    teacher.response_format_mode = "ignore"
    text = content_of(post(teacher, schema_chat(Subject))[2])
    with pytest.raises(ValueError):
        json.loads(text)
    fenced = _FENCED.search(text)
    assert fenced is not None
    assert_valid(Subject, json.loads(fenced.group(1)))


@pytest.mark.parametrize("response_format", [None, {"type": "json_object"}])
def test_schema_in_the_prompt_is_followed(
    teacher: FakeTeacher, response_format: dict[str, str] | None
) -> None:
    prompt = (
        f"List the subjects.\n\n{_SCHEMA_MARKER}\n```json\n"
        f"{json.dumps(Catalogue.model_json_schema())}\n```"
    )
    extra = {} if response_format is None else {"response_format": response_format}
    fenced = _FENCED.search(content_of(post(teacher, chat(prompt, **extra))[2]))
    assert fenced is not None
    assert_valid(Catalogue, json.loads(fenced.group(1)))


def test_json_object_without_a_schema_answers_in_an_object(teacher: FakeTeacher) -> None:
    document = json.loads(
        content_of(post(teacher, chat(response_format={"type": "json_object"}))[2])
    )
    assert list(document) == ["answer"]
    assert len(document["answer"].split()) >= 40


def test_reject_mode_refuses_json_schema_only(teacher: FakeTeacher) -> None:
    teacher.response_format_mode = "reject"
    status, _, payload = post(teacher, schema_chat(Subject))
    assert status == 400
    assert "response_format" in payload["error"]["message"]
    assert "json_schema" in payload["error"]["message"]
    assert post(teacher, chat())[0] == 200


def test_unknown_settings_are_refused(teacher: FakeTeacher) -> None:
    with pytest.raises(ValueError):
        teacher.response_format_mode = "honor"  # type: ignore[assignment]
    with pytest.raises(ValueError):
        teacher.script(["404"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        teacher.set_fault_rates({"500": 0.7, "429": 0.6})


# -- auth


def test_api_key_is_checked() -> None:
    with FakeTeacher(api_key="sk-right") as teacher:
        for key in (None, "sk-wrong"):
            status, _, payload = post(teacher, chat(), key=key)
            assert status == 401
            assert payload["error"]["message"] == "Incorrect API key provided"
            assert payload["error"]["type"] == "invalid_request_error"
            assert payload["error"]["code"] == "invalid_api_key"
        assert post(teacher, chat(), key="sk-right")[0] == 200


# -- faults


def test_scripted_faults_come_in_order_then_normal_replies(teacher: FakeTeacher) -> None:
    teacher.retry_after = "0.5"
    teacher.script(["429", "500", "503", "malformed", "truncated"])
    body = schema_chat(Subject)

    status, headers, payload = post(teacher, body)
    assert (status, headers["Retry-After"]) == (429, "0.5")
    assert payload["error"]["code"] == "rate_limit_exceeded"
    assert post(teacher, body)[0] == 500
    status, _, payload = post(teacher, body)
    assert status == 503
    assert payload["error"]["type"] == "server_error"

    malformed = post(teacher, body)[2]
    assert finish_of(malformed) == "stop"
    with pytest.raises(ValueError):
        json.loads(content_of(malformed))

    truncated = post(teacher, body)[2]
    normal = post(teacher, body)[2]
    assert finish_of(truncated) == "length"
    assert finish_of(normal) == "stop"
    assert content_of(normal).startswith(content_of(truncated))
    assert len(content_of(truncated)) < len(content_of(normal))
    assert teacher.request_count == 6
    assert teacher.requests == [body] * 6


def test_malformed_prose_is_empty(teacher: FakeTeacher) -> None:
    teacher.script(["malformed"])
    assert content_of(post(teacher, chat())[2]) == ""


def test_script_with_match_only_hits_matching_requests(teacher: FakeTeacher) -> None:
    teacher.script(["500"], match="poison")
    assert post(teacher, chat("clean"))[0] == 200
    assert post(teacher, chat("poison"))[0] == 500
    assert post(teacher, chat("poison"))[0] == 200


async def test_timeout_fault_outlasts_the_client(
    teacher: FakeTeacher, caplog: pytest.LogCaptureFixture
) -> None:
    teacher.script(["timeout"])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
        url = f"{teacher.base_url}/chat/completions"
        with pytest.raises(TimeoutError):
            async with session.post(url, json=chat()) as response:
                await response.read()
        async with session.post(url, json=chat()) as response:
            assert response.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_disconnect_fault_drops_the_connection(
    teacher: FakeTeacher, caplog: pytest.LogCaptureFixture
) -> None:
    teacher.script(["disconnect"])
    async with aiohttp.ClientSession() as session:
        url = f"{teacher.base_url}/chat/completions"
        with pytest.raises(aiohttp.ClientError):
            async with session.post(url, json=chat()) as response:
                await response.read()
        async with session.post(url, json=chat()) as response:
            assert response.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_always_fail_keeps_failing_matching_requests(teacher: FakeTeacher) -> None:
    teacher.always_fail("poison", fault="503")
    assert [post(teacher, chat("poison pill"))[0] for _ in range(3)] == [503] * 3
    assert post(teacher, chat("clean"))[0] == 200
    assert teacher.count_matching("poison") == 3
    assert teacher.request_count == 4


def test_fault_rates_are_seeded_and_matched(teacher: FakeTeacher) -> None:
    teacher.set_fault_rates({"429": 0.5})
    first = [post(teacher, chat(f"q{i}"))[0] for i in range(30)]
    assert set(first) == {200, 429}
    teacher.set_fault_rates({"429": 0.5})
    assert [post(teacher, chat(f"q{i}"))[0] for i in range(30)] == first

    teacher.set_fault_rates({"500": 1.0}, match="flaky")
    assert post(teacher, chat("flaky"))[0] == 500
    assert post(teacher, chat("steady"))[0] == 200


def test_latency_delays_replies(teacher: FakeTeacher) -> None:
    teacher.latency = 0.3
    started = time.perf_counter()
    assert post(teacher, chat())[0] == 200
    assert time.perf_counter() - started >= 0.3


def test_stop_is_not_held_up_by_a_sleeping_handler() -> None:
    teacher = FakeTeacher(timeout_sleep=30.0).start()
    teacher.script(["timeout"])
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            post(teacher, chat(), timeout=20)
        except Exception as error:
            failures.append(error)

    client = threading.Thread(target=ask)
    client.start()
    deadline = time.monotonic() + 5
    while teacher.request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    teacher.stop()
    assert time.perf_counter() - started < 5  # against the handler's 30 s sleep
    client.join(timeout=10)
    assert not client.is_alive()
    assert failures


def test_runs_standalone() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "glan.testing.fake_teacher", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        with _OPENER.open(f"{base_url}/models", timeout=5) as response:
            assert json.loads(response.read())["data"][0]["id"] == "fake-model"
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
