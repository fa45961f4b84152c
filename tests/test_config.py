from __future__ import annotations

import pytest

from glan.config import ConfigError, GenerateConfig


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: big\nquestions_per_syllabus: 7\n"
        "stages:\n  answer:\n    model: small\n    temperature: 0.2\n",
        encoding="utf-8",
    )
    config = GenerateConfig.load(path, questions_per_syllabus=9, seed=None)
    assert config.questions_per_syllabus == 9
    assert config.stage("question").model == "big"
    answer = config.stage("answer")
    assert (answer.model, answer.temperature, answer.top_p) == ("small", 0.2, None)


def test_paper_defaults():
    config = GenerateConfig()
    assert (config.stage("subjects").temperature, config.stage("subjects").top_p) == (1.0, 0.95)
    assert (config.stage("answer").temperature, config.stage("answer").top_p) == (0.7, 0.95)
    assert config.subject_queries == 10
    assert config.stage("answer").model == config.model


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("questions_per_syllabus: -1\n", "questions_per_syllabus"),
        ("stages:\n  answer:\n    temprature: 1\n", "temprature"),
        ("- a\n- b\n", "mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, text, phrase):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=phrase):
        GenerateConfig.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        GenerateConfig.load(tmp_path / "nope.yaml")
