"""Structured output that negotiates (issue 10): every server's spelling, found by trying, kept in
the run's store; refusals as the real servers word them (see /work/notes/real-teacher.md)."""

from __future__ import annotations

import time

import pytest

from conftest import read_rows
from glan import api
from glan.llm.client import OpenAIClient
from glan.llm.negotiation import MODES_META, Negotiator, is_refusal
from glan.llm.structured import (
    body_for,
    conforms,
    extract_json,
    grammar_schema,
    json_schema_of,
)
from glan.llm.types import ChatRequest
from glan.run.store import Store
from glan.stages.subjects import SubjectList
from test_cli import generate_args
from test_cli_errors import one_line

# -- what a refusal is ----------------------------------------------------------------------------

LLAMA_CPP_500 = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body',"
        " 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\","
        " 'input': 'json_schema'}",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, LLAMA_CPP_500["error"]["message"]),  # llama-cpp-python 0.3.36
        (
            422,
            "Failed to deserialize the JSON body into the target type: response_format:"
            " missing field `value` at line 1 column 168",
        ),  # TGI
        (422, "grammar is not supported"),  # TGI --disable-grammar-support
        (
            400,
            "response_format value as json_schema is enabled only for api versions"
            " 2024-08-01-preview and later",
        ),  # Azure, old api-version
        (
            400,
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with"
            " this model.",
        ),  # Azure, old model
        (
            400,
            "litellm.UnsupportedParamsError: ollama does not support parameters:"
            " ['response_format']",
        ),  # LiteLLM
        (
            400,
            "Invalid value: 'json'. Supported values are: 'json_object', 'json_schema', and"
            " 'text'.",
        ),  # OpenAI
    ],
)
def test_the_refusals_servers_send_are_refusals(status, message):
    assert is_refusal(status, message)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "The server had an error while processing your request. Sorry about that!"),
        (503, "The engine is currently overloaded, please try again later."),
        (
            400,
            "This model's maximum context length is 2048 tokens. However, you requested 3039"
            " tokens",
        ),
        (429, "Rate limit reached for requests"),
        (404, "The model `x` does not exist."),
        (401, "Invalid API key"),
    ],
)
def test_ordinary_errors_are_not_refusals(status, message):
    assert not is_refusal(status, message)


def test_a_refusal_named_only_by_the_param_field():
    payload = {"error": {"message": "Invalid value.", "param": "response_format.type"}}
    assert is_refusal(400, "Invalid value.", payload)


# -- the modes' bodies, and what counts as a reply of the schema's shape ---------------------------

SCHEMA = json_schema_of(SubjectList)


def test_each_mode_spells_the_schema_its_servers_way():
    request = ChatRequest(
        model="m", messages=({"role": "user", "content": "list"},), schema=SCHEMA, schema_name="S"
    )
    assert body_for(request, "json_schema")["response_format"]["json_schema"]["schema"] == SCHEMA
    grammar = grammar_schema(SCHEMA)  # lists and strings need an item, a character
    assert body_for(request, "json_object+schema")["response_format"] == {
        "type": "json_object",
        "schema": grammar,
    }
    assert body_for(request, "json+value")["response_format"] == {"type": "json", "value": grammar}
    in_prompt = body_for(request, "prompt")
    assert "response_format" not in in_prompt
    assert '"subjects"' in in_prompt["messages"][-1]["content"]


def test_json_with_raw_newlines_inside_strings_is_read():
    # llama.cpp's grammar lets control characters through inside strings
    text = '{"subjects": [{"name": "Math", "level": "one\ntwo", "subtopics": ["a\tb"]}]}'
    assert extract_json(text)["subjects"][0]["level"] == "one\ntwo"
    assert extract_json(f"Here:\n```json\n{text}\n```")["subjects"][0]["subtopics"] == ["a\tb"]
    assert conforms(text, SCHEMA)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"subjects": [{"name": "A", "level": "b", "subtopics": ["c"]}]}', True),
        ('{"subjects": []}', True),
        ('{"answer": "prose"}', False),  # json_object without the schema
        ('{"subjects": [{"name": "A"}]}', False),  # a required key missing
        ('{"subjects": [{"name": 1, "level": "b", "subtopics": []}]}', False),
        ("Sure! Mathematics, Chemistry.", False),
    ],
)
def test_a_reply_conforms_when_it_has_the_schemas_shape(text, expected):
    assert conforms(text, SCHEMA) is expected


def test_the_negotiator_moves_on_once_and_confirms_the_first_mode_that_works():
    learnt = []
    negotiator = Negotiator("auto", on_learn=lambda model, mode: learnt.append((model, mode)))
    assert negotiator.mode("m") == "json_schema"
    assert negotiator.refused("m", "json_schema", "HTTP 500")
    assert negotiator.refused("m", "json_schema", "HTTP 500")  # a second one in flight: no skip
    assert negotiator.mode("m") == "json_object+schema"
    assert negotiator.ignored("m", "json_object+schema")  # accepted, but not followed
    assert negotiator.mode("m") == "json+value"
    negotiator.worked("m", "json+value")
    assert learnt == [("m", "json+value")]
    assert not negotiator.ignored("m", "json+value")  # confirmed: a bad reply is a bad reply
    assert negotiator.ignored("m", "json_schema")  # one asked in an old mode is asked again
    assert negotiator.mode("other") == "json_schema"  # per model


def test_a_forced_mode_is_never_left_and_an_old_name_still_works():
    negotiator = Negotiator("response_format")
    assert negotiator.mode("m") == "json_schema"
    assert not negotiator.refused("m", "json_schema", "HTTP 400")
    assert Negotiator("prompt").mode("m") == "prompt"


# -- against servers that speak other dialects ----------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "mode"), [("llama-cpp", "json_object+schema"), ("tgi", "json+value")]
)
def test_a_run_finds_the_servers_mode_at_once_and_a_resume_does_not_probe(
    tmp_path, teacher, make_config, dialect, mode
):
    teacher.dialect = dialect
    # a refusal that took a retry would wait about 30 s: the run would time out
    config = make_config(retry_backoff=30.0)
    started = time.monotonic()
    result = api.generate(config, tmp_path, progress="none")
    assert time.monotonic() - started < 20
    assert result.complete and result.rows == 12
    assert len(read_rows(tmp_path)) == 12
    structured = [b for b in teacher.requests if "response_format" in b]
    refused = [b for b in structured if b["response_format"]["type"] == "json_schema"]
    assert 1 <= len(refused) <= config.concurrency  # only the first wave, sent before a reply
    store = Store.open(tmp_path)
    try:
        assert store.get_meta(MODES_META) == {teacher.base_url: {"teacher-big": mode}}
    finally:
        store.close()

    teacher.reset()  # more subjects and syllabi on the same run: no probing
    api.generate(make_config(subject_queries=3, max_subjects_per_discipline=3), tmp_path)
    structured = [b for b in teacher.requests if "response_format" in b]
    assert structured
    assert {b["response_format"]["type"] for b in structured} == {
        "json_object" if dialect == "llama-cpp" else "json"
    }


def test_a_server_that_takes_a_mode_and_ignores_it_moves_on_to_the_prompt(
    tmp_path, teacher, make_config
):
    # json_schema: 400; json_object with a schema: accepted, plain JSON; json+value: ignored
    teacher.response_format_mode = "reject"
    result = api.generate(make_config(), tmp_path, progress="none")
    assert result.complete and result.rows == 12
    store = Store.open(tmp_path)
    try:
        assert store.get_meta(MODES_META)[teacher.base_url]["teacher-big"] == "prompt"
    finally:
        store.close()


async def test_ordinary_server_errors_are_still_retried(teacher):
    teacher.dialect = "llama-cpp"
    teacher.script(["500", "503"])
    request = ChatRequest(
        model="m", messages=({"role": "user", "content": "list"},), schema=SCHEMA, schema_name="S"
    )
    async with OpenAIClient(teacher.base_url, "sk-test", structured="json_object+schema") as client:
        client.retry.backoff_base = 0.01
        response = await client.complete(request)
    assert conforms(response.text, SCHEMA)
    assert teacher.request_count == 3


def test_a_forced_mode_the_server_refuses_stops_the_run_with_one_line(tmp_path, teacher, cli):
    teacher.dialect = "llama-cpp"
    args = generate_args(tmp_path, teacher.base_url, "--structured-output", "json_schema")
    line = one_line(cli(*args), 1, "refused structured output as json_schema")
    assert "--structured-output auto" in line


def test_an_unknown_mode_is_refused(tmp_path, teacher, cli):
    args = generate_args(tmp_path, teacher.base_url, "--structured-output", "xml")
    one_line(cli(*args), 1, "structured_output")
