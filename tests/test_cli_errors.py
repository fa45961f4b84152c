"""Bad inputs and awkward situations, as a user meets them (issue 16): each ends in one clear line
on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import cli_env, read_rows
from glan import api
from inprocess import run_glan
from test_cli import generate_args


def one_line(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> str:
    """The error line of a command that failed as it should; asserts there is no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def long_run_args(run_dir: Path, base_url: str) -> list[str]:
    """A run of 2 x 2 x 20 = 80 pairs."""
    args = generate_args(run_dir, base_url, "--concurrency", "2")
    args[args.index("--questions-per-syllabus") + 1] = "20"
    return args


@contextmanager
def slow_run(run_dir: Path, teacher) -> Iterator[subprocess.Popen[str]]:
    """``glan generate`` running against a slow teacher, once its first replies are stored."""
    teacher.latency = 0.2
    args = long_run_args(run_dir, teacher.base_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "glan", *args],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while teacher.request_count < 12:  # questions and answers are under way
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


# -- 4: one writer per run directory ---------------------------------------------------------------


def test_a_second_writer_is_refused_and_named(tmp_path, teacher, cli):
    with slow_run(tmp_path, teacher) as first:
        second = cli(*generate_args(tmp_path, teacher.base_url))
        line = one_line(second, 1, f"another glan run (pid {first.pid}, glan generate)")
        assert str(tmp_path) in line
        curate = cli("curate", str(tmp_path))
        one_line(curate, 1, f"pid {first.pid}, glan generate")
        assert cli("status", str(tmp_path)).returncode == 0  # readers need no lock
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    # The lock went with its holder: the next run takes it and finishes the work.
    teacher.latency = 0.0
    again = cli(*long_run_args(tmp_path, teacher.base_url))
    assert again.returncode == 0, again.stderr
    assert len(read_rows(tmp_path)) == 80


# -- 8: SIGTERM is Ctrl-C ------------------------------------------------------------------------


def test_sigterm_says_what_was_kept_like_ctrl_c(tmp_path, teacher):
    with slow_run(tmp_path, teacher) as process:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert (
        f"stopped; everything received is stored. Run the same command to continue ({tmp_path})."
        in stderr
    )


# -- 7: reading a read-only run --------------------------------------------------------------------


def _unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to write anywhere (none needed when
    not root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.fail(
            "running as root without setpriv (util-linux): a read-only run cannot be tested"
        )
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_a_read_only_run_can_be_read(tmp_path, make_config):
    run = tmp_path / "run"
    api.generate(make_config(), run, progress="none")
    for path in [run, *run.iterdir()]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    def glan(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*_unprivileged(), sys.executable, "-m", "glan", *args]
        return subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=120)

    try:
        status = glan("status", str(run))
        assert status.returncode == 0, status.stderr
        assert "12 rows" in status.stdout
        exported = glan("export", str(run), "--out", str(tmp_path / "export"))
        assert exported.returncode == 0, exported.stderr
        assert "12 pairs" in exported.stdout
        reported = glan("report", str(run), "--out", str(tmp_path / "report.html"))
        assert reported.returncode == 0, reported.stderr
        # Writing into it by default, or curating it, says why it cannot.
        one_line(glan("export", str(run)), 1, f"{run} is read-only; pass --out")
        one_line(glan("report", str(run)), 1, f"{run} is read-only; pass --out")
        one_line(glan("curate", str(run)), 1, f"{run} is not writable")
    finally:
        for path in [run, *run.iterdir()]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


# -- 1: prompt templates are checked before any request -------------------------------------------


def test_a_template_with_an_unknown_variable_is_refused_before_any_request(tmp_path, teacher):
    templates = tmp_path / "p"
    templates.mkdir()
    question = templates / "question.j2"
    question.write_text("Ask about {{ subject }}.\n{% if no_such_var %}more{% endif %}\n")
    expected = (
        f"{question.resolve()}:2: unknown variable no_such_var; question.j2 may use: discipline,"
        " key_concepts, language, learned_up_to, level, outline, question_type, sessions, subject"
    )
    run = generate_args(tmp_path / "run", teacher.base_url, "--prompts", str(templates))
    one_line(run_glan(*run), 1, expected)
    one_line(run_glan("estimate", "--prompts", str(templates)), 1, expected)
    assert teacher.request_count == 0


def test_a_template_file_that_replaces_nothing_is_named(tmp_path, teacher):
    templates = tmp_path / "p"
    templates.mkdir()
    (templates / "questoin.j2").write_text("Ask about {{ subject }}.\n")
    run = generate_args(tmp_path / "run", teacher.base_url, "--prompts", str(templates))
    phrases = ("questoin.j2: no template is called questoin.j2", "did you mean question.j2?")
    one_line(run_glan(*run), 1, *phrases)
    assert teacher.request_count == 0
    # A file the templates include is used, so it is no mistake.
    (templates / "questoin.j2").rename(templates / "common.j2")
    (templates / "question.j2").write_text('{% include "common.j2" %}\n')
    assert run_glan("estimate", "--prompts", str(templates)).returncode == 0


# -- 5: every option the docs name exists (tests/test_options_documented.py checks the docs) ------


def test_estimate_takes_a_price_table(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  my-model: {input: 1.0, output: 2.0}\n", encoding="utf-8")
    estimate = ("estimate", "--disciplines", "Mathematics", "--model", "my-model")
    unpriced = run_glan(*estimate)
    assert unpriced.returncode == 0
    assert "n/a: a model missing from the price table" in unpriced.stdout
    priced = run_glan(*estimate, "--prices", str(prices))
    assert priced.returncode == 0, priced.stderr
    assert "n/a" not in priced.stdout and "$" in priced.stdout


@pytest.mark.parametrize("retries", [0, 1])
def test_max_retries_is_an_option(tmp_path, teacher, retries):
    teacher.always_fail("curriculum designer", fault="500")
    result = run_glan(*generate_args(tmp_path, teacher.base_url, "--max-retries", str(retries)))
    assert result.returncode == 3, result.stderr
    assert teacher.request_count == 4 * (1 + retries)  # 2 disciplines x 2 subject queries


# -- 6: config values are taken as written --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("concurrency: true\n", "concurrency: Input should be a valid integer"),
        ('seed: "7"\n', "seed: Input should be a valid integer"),
        ("stages:\n  answer: {max_tokens: 10.5}\n", "stages.answer.max_tokens: Input should be"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_refused(tmp_path, text, problem):
    config = tmp_path / "run.yaml"
    config.write_text(text + "timeout: 30\nprices: prices.yaml\n", encoding="utf-8")  # ints, paths
    line = one_line(run_glan("estimate", "--config", str(config)), 1, f"in {config}: {problem}")
    assert "timeout" not in line and "prices" not in line


# -- 9: a broken price table, an empty language ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models:\n  m: {input: cheap, output: 1}\n", "not a valid price table: models.m.input:"),
        ("models: [\n", "not valid YAML: line 2:"),
        ("- m\n", "not a valid price table: it must be a mapping"),
    ],
)
def test_a_broken_price_table_is_one_line_naming_file_and_key(tmp_path, text, problem):
    prices = tmp_path / "prices.yaml"
    prices.write_text(text, encoding="utf-8")
    one_line(run_glan("estimate", "--prices", str(prices)), 1, f"{prices} is {problem}")


@pytest.mark.parametrize(
    "command",
    [
        ("estimate", "--language", " "),
        ("estimate", "--syllabus-language", ""),
        ("taxonomy", "build", "--out", "t.yaml", "--api-key", "x", "--language", ""),
        ("curate", ".", "--language", ""),
    ],
)
def test_an_empty_language_is_refused(command):
    option = next(word for word in command if word.endswith("language"))
    one_line(run_glan(*command), 1, f"{option} is empty: name a language")
