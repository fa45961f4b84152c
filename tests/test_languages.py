"""Languages (``--language``, ``--syllabus-language``, ``taxonomy build --language``) and the
user's own prompt templates (``--prompts DIR``, ``glan prompts export``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import API_KEY, read_rows
from glan import api
from glan.config import ConfigError, GenerateConfig
from glan.languages import language_code, language_name
from glan.prompts import PROMPT_VERSION, Prompts, prompts_for
from inprocess import run_glan


@pytest.mark.parametrize(
    ("given", "name", "code"),
    [
        ("ko", "Korean", "ko"),
        ("KOR", "Korean", "ko"),
        ("korean", "Korean", "ko"),
        (" Korean ", "Korean", "ko"),
        ("pt-BR", "Brazilian Portuguese", "pt"),
        ("zh_TW", "Traditional Chinese", "zh"),
        ("de-AT", "German (AT)", "de"),
        ("Old Norse", "Old Norse", None),
        ("한국어", "한국어", None),
    ],
)
def test_language_names_and_codes(given: str, name: str, code: str | None) -> None:
    assert language_name(given) == name
    assert language_code(given) == code


def test_config_reads_a_language_as_its_name() -> None:
    config = GenerateConfig(language="ko", syllabus_language="ja")
    assert (config.language, config.syllabus_language) == ("Korean", "Japanese")
    assert GenerateConfig(language="  ").language is None


def generate_args(run: Path, base_url: str, *extra: str) -> list[str]:
    return [
        *("generate", "--out", str(run), "--base-url", base_url, "--api-key", API_KEY),
        *("--model", "teacher-big", "--disciplines", "Mathematics,Chemistry"),
        *("--subject-queries", "1", "--max-subjects-per-discipline", "1"),
        *("--questions-per-syllabus", "2", "--progress", "none"),
        *extra,
    ]


def prompts_of(teacher, marker: str) -> list[str]:
    """The prompts of the one-message requests (first turns) that contain ``marker``."""
    return [
        b["messages"][0]["content"]
        for b in teacher.requests
        if len(b["messages"]) == 1 and marker in b["messages"][0]["content"]
    ]


def test_a_korean_run_end_to_end(tmp_path, teacher):
    result = run_glan(
        *generate_args(tmp_path, teacher.base_url, "--language", "ko", "--syllabus-language", "ko")
    )
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path)
    assert len(rows) == 2 * 2
    assert {(r["meta"]["language"], r["meta"]["syllabus_language"]) for r in rows} == {
        ("Korean", "Korean")
    }
    subjects = prompts_of(teacher, "curriculum designer")
    syllabi = prompts_of(teacher, "Design the syllabus")
    questions = prompts_of(teacher, "homework question")
    answers = [b for b in teacher.requests if b["messages"][0]["role"] == "system"]
    assert len(subjects) == 2 and len(syllabi) == 2 and len(questions) == 4 and len(answers) == 4
    assert all("Write everything in Korean." in p for p in subjects + syllabi)
    assert all("Write the question in Korean." in p for p in questions)
    assert all("Answer in Korean." in b["messages"][0]["content"] for b in answers)


def test_questions_in_korean_from_english_syllabi(tmp_path, teacher):
    result = run_glan(*generate_args(tmp_path, teacher.base_url, "--language", "Korean"))
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path)
    assert {(r["meta"]["language"], r["meta"]["syllabus_language"]) for r in rows} == {
        ("Korean", None)
    }
    assert not any("Korean" in p for p in prompts_of(teacher, "curriculum designer"))
    assert not any("Korean" in p for p in prompts_of(teacher, "Design the syllabus"))
    assert all("in Korean" in p for p in prompts_of(teacher, "homework question"))


def test_build_a_taxonomy_in_korean(tmp_path, teacher):
    out = tmp_path / "ko.yaml"
    result = run_glan(
        *("taxonomy", "build", "--out", str(out), "--base-url", teacher.base_url),
        *("--api-key", API_KEY, "--language", "ko", "--depth", "1", "--max-fields", "4"),
    )
    assert result.returncode == 0, result.stderr
    assert teacher.request_count == 1
    assert (
        "Write the names and descriptions in Korean."
        in teacher.requests[0]["messages"][0]["content"]
    )
    assert "fields (each a discipline)" in result.stderr


# ------------------------------------------------------------------------------------ prompts


def test_export_then_edit_a_template(tmp_path, teacher):
    templates = tmp_path / "prompts"
    exported = run_glan("prompts", "export", str(templates))
    assert exported.returncode == 0, exported.stderr
    names = sorted(p.name for p in templates.iterdir())
    assert "question.j2" in names and "taxonomy_fields.j2" in names and "answer_system.j2" in names
    # an exact copy is the same prompt version: the version hashes text, not place
    assert Prompts(templates).version == PROMPT_VERSION

    question = templates / "question.j2"
    question.write_text(question.read_text() + "\nUse SI units wherever quantities appear.\n")
    edited = Prompts(templates)
    assert edited.version != PROMPT_VERSION

    bundled_run, edited_run = tmp_path / "bundled", tmp_path / "edited"
    assert run_glan(*generate_args(bundled_run, teacher.base_url)).returncode == 0
    assert not any("SI units" in p for p in prompts_of(teacher, "homework question"))
    bundled_subjects = prompts_of(teacher, "curriculum designer")
    teacher.reset()
    result = run_glan(*generate_args(edited_run, teacher.base_url, "--prompts", str(templates)))
    assert result.returncode == 0, result.stderr

    questions = prompts_of(teacher, "homework question")
    assert len(questions) == 4
    assert all(p.endswith("Use SI units wherever quantities appear.") for p in questions)
    assert {r["meta"]["prompt_version"] for r in read_rows(bundled_run)} == {PROMPT_VERSION}
    assert {r["meta"]["prompt_version"] for r in read_rows(edited_run)} == {edited.version}
    # the templates left as they were give the same prompts
    assert prompts_of(teacher, "curriculum designer") == bundled_subjects


def test_prompts_dir_in_the_config_and_a_template_of_ones_own(tmp_path, teacher):
    templates = tmp_path / "mine"
    templates.mkdir()
    (templates / "answer_system.j2").write_text("You are a terse tutor. Answer in one line.")
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts_dir: {templates}\n")
    result = run_glan(*generate_args(tmp_path / "run", teacher.base_url, "--config", str(config)))
    assert result.returncode == 0, result.stderr
    systems = [b["messages"][0]["content"] for b in teacher.requests if len(b["messages"]) == 2]
    assert systems and set(systems) == {"You are a terse tutor. Answer in one line."}


def test_bad_prompt_directories_are_clear_errors(tmp_path, teacher):
    missing = run_glan(
        *generate_args(tmp_path / "run", teacher.base_url, "--prompts", str(tmp_path / "nope"))
    )
    assert missing.returncode == 1
    assert "prompts directory" in missing.stderr and "not found" in missing.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "question.j2").write_text("Line one\n{% if language %}\nno endif\n")
    result = run_glan(*generate_args(tmp_path / "run", teacher.base_url, "--prompts", str(broken)))
    assert result.returncode == 1
    assert "question.j2:" in result.stderr and "template error" in result.stderr
    assert teacher.request_count == 0

    with pytest.raises(ConfigError, match=r"no prompt template named nothing\.j2"):
        prompts_for(None).render("nothing")


def test_export_does_not_overwrite_edits(tmp_path):
    templates = tmp_path / "prompts"
    assert run_glan("prompts", "export", str(templates)).returncode == 0
    (templates / "repair.j2").write_text("mine")
    again = run_glan("prompts", "export", str(templates))
    assert again.returncode == 1 and "--force" in again.stderr
    assert (templates / "repair.j2").read_text() == "mine"
    assert run_glan("prompts", "export", str(templates), "--force").returncode == 0
    assert (templates / "repair.j2").read_text() != "mine"


def test_a_run_refuses_nothing_for_the_bundled_taxonomy(tmp_path, teacher, make_config):
    """The bundled taxonomy carries no review state: --allow-unreviewed is never needed."""
    result = api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    assert result.complete
