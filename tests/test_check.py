"""``glan check`` against the fake teacher in each dialect, and what it says when a run would
fail."""

from __future__ import annotations

import pytest

from conftest import API_KEY
from glan.llm.local_server import free_port
from inprocess import run_glan
from test_cli_errors import one_line


def check(base_url: str, *extra: str, key: str = API_KEY):
    return run_glan("check", "--base-url", base_url, "--api-key", key, *extra)


@pytest.mark.parametrize(
    ("dialect", "mode"),
    [("openai", "json_schema"), ("llama-cpp", "json_object+schema"), ("tgi", "json+value")],
)
def test_check_finds_the_mode_each_server_takes(teacher, dialect, mode):
    teacher.dialect = dialect
    result = check(teacher.base_url, "--model", "fake-model")
    assert result.returncode == 0, result.stderr
    assert f"ready: a run will ask for JSON as {mode}" in result.stdout
    assert "'fake-model' is listed" in result.stdout
    assert "tokens/s" in result.stdout
    assert "no rate-limit headers" in result.stdout


def test_check_says_a_mode_taken_and_ignored_and_moves_on(teacher):
    # json_schema: 400; json_object with a schema: plain JSON; json+value: prose; prompt works
    teacher.response_format_mode = "reject"
    result = check(teacher.base_url, "--model", "fake-model")
    assert result.returncode == 0, result.stderr
    assert "ready: a run will ask for JSON as prompt" in result.stdout
    assert "ignored: the reply does not follow the schema" in " ".join(result.stdout.split())


def test_check_notes_a_model_that_is_not_listed(teacher):
    teacher.dialect = "llama-cpp"
    result = check(teacher.base_url, "--model", "gpt-4o")
    assert result.returncode == 0, result.stderr
    assert "'gpt-4o' is not in /models (fake-model)" in " ".join(result.stdout.split())


def test_check_fails_with_one_line_on_a_wrong_key(teacher):
    one_line(check(teacher.base_url, key="wrong"), 1, "rejected the API key", "--api-key")


def test_check_fails_with_one_line_when_nothing_listens():
    one_line(check(f"http://127.0.0.1:{free_port()}/v1"), 1, "cannot reach")


def test_check_of_a_forced_mode_the_server_refuses(teacher):
    teacher.dialect = "tgi"
    result = check(teacher.base_url, "--structured-output", "json_schema")
    one_line(result, 1, "does not take structured output as json_schema", "auto")


def test_check_reads_the_endpoint_from_a_run_config(tmp_path, teacher):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"base_url: {teacher.base_url}\napi_key: {API_KEY}\nmodel: fake-model\n"
        "structured_output: json_schema\n",
        encoding="utf-8",
    )
    result = run_glan("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ready: a run will ask for JSON as json_schema" in result.stdout
