"""glan against a real teacher (issue 10): llama.cpp's server with SmolLM2-135M-Instruct on
127.0.0.1. Few and small on purpose: the model writes 5-20 tokens/s on a busy 2-core machine, so
every reply is capped. They need ``pip install "glan[local]"`` (in the dev install).

llama-cpp-python refuses ``json_schema`` with HTTP 500 and takes ``json_object`` with a schema;
these tests are what shows that glan finds that by itself.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import cli_env, read_rows, run_cli
from glan.llm.local_server import BUNDLED_ALIAS
from glan.llm.negotiation import MODES_META
from glan.llm.types import unpack_request
from inprocess import run_glan
from real_teacher import counting_proxy, llama, real_teacher, skip_without_llama

__all__ = ["llama"]  # the session fixture

pytestmark = real_teacher

# A few pairs, each reply capped (the syllabus needs room for its JSON).
SMALL = {
    "disciplines": ["Mathematics"],
    "subject_queries": 1,
    "max_subjects_per_discipline": 1,
    "questions_per_syllabus": 2,
    "timeout": 900,
    "stages": {
        "subjects": {"max_tokens": 160},
        "syllabus": {"max_tokens": 320},
        "question": {"max_tokens": 64},
        "answer": {"max_tokens": 64},
    },
}
STRUCTURED_WORDS = ("response_format", "json_schema", "structured output", "literal_error")


def glan(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """The CLI, with the time a 135M model on two busy cores needs."""
    return run_cli(*args, timeout=timeout)


def meta(run_dir: Path, key: str) -> Any:
    with sqlite3.connect(f"file:{run_dir / 'glan.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else yaml.safe_load(row[0])


def stored_calls(run_dir: Path) -> list[dict[str, Any]]:
    """The request bodies of the calls committed in a run's store."""
    with sqlite3.connect(f"file:{run_dir / 'glan.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT request FROM calls").fetchall()
    return [unpack_request(row[0])["body"] for row in rows]


def asked(body: dict[str, Any]) -> str:
    """What a request asks, whatever way it asked for JSON."""
    return repr(sorted((k, repr(v)) for k, v in body.items() if k != "response_format"))


@pytest.fixture(scope="session")
def bundled_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    """``glan generate --local-model`` (the bundled SmolLM2) of two pairs, run once."""
    skip_without_llama()
    where = tmp_path_factory.mktemp("bundled")
    config = where / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    started = time.monotonic()
    result = glan(
        "generate", "--out", str(where / "run"), "--local-model", "--config", str(config),
        "--progress", "log", "-v",
    )  # fmt: skip
    return result, where / "run", time.monotonic() - started


def test_generate_with_the_bundled_model_writes_rows(bundled_run):
    result, run_dir, seconds = bundled_run
    assert result.returncode in (0, 3), result.stderr  # 3: some items failed (a 135M model)
    assert f"local teacher: {BUNDLED_ALIAS} at http://127.0.0.1:" in result.stderr
    rows = read_rows(run_dir)
    assert rows, result.stderr
    assert all(r["meta"]["question_model"] == BUNDLED_ALIAS for r in rows)
    # found by trying: json_schema refused with HTTP 500, json_object with a schema taken
    (modes,) = meta(run_dir, MODES_META).values()
    assert modes == {BUNDLED_ALIAS: "json_object+schema"}
    failures = [line for line in result.stdout.splitlines() if line.startswith("failed")]
    assert not [f for f in failures if any(w in f for w in STRUCTURED_WORDS)], failures
    print(f"bundled run: {len(rows)} rows in {seconds:.0f} s")  # shown with -s


def test_a_run_killed_midway_and_resumed_asks_nothing_stored(llama, bundled_run, tmp_path):
    """The finished run asks for two more questions; it is killed -9 once the first new reply is
    stored, and run again: nothing whose reply was stored is sent again."""
    _, finished, _ = bundled_run
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    before = len(stored_calls(run_dir))
    with counting_proxy(llama.base_url) as proxy:
        args = [
            "generate", "--out", str(run_dir), "--config", str(config), "--base-url",
            proxy.base_url, "--api-key", "none", "--model", BUNDLED_ALIAS, "--answer-model",
            BUNDLED_ALIAS, "--questions-per-syllabus", "4", "--progress", "log",
        ]  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "glan", *args],
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 600
            while len(stored_calls(run_dir)) == before:
                assert process.poll() is None, "the run ended before it was killed"
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            process.kill()
            process.wait()
        stored = {asked(body) for body in stored_calls(run_dir)}
        killed_at = len(stored)
        assert killed_at > before
        proxy.take()

        resumed = glan(*args)
        sent = proxy.take()
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_rows(run_dir)) == 4
    assert sent, "the resumed run asked for the rest"
    assert not [body for body in sent if asked(body) in stored]
    assert len(stored_calls(run_dir)) - killed_at == len(sent)  # each request sent is new


def test_taxonomy_build_of_a_tiny_tree(llama, tmp_path):
    out = tmp_path / "tax.yaml"
    result = glan(
        "taxonomy", "build", "--out", str(out), "--base-url", llama.base_url, "--api-key",
        "none", "--model", BUNDLED_ALIAS, "--depth", "1", "--max-fields", "2", "--max-tokens",
        "200",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fields = yaml.safe_load(out.read_text(encoding="utf-8"))["fields"]
    assert 1 <= len(fields) <= 2
    assert all(f["name"].strip() for f in fields)


def test_check_reports_the_mode_llama_cpp_takes(llama):
    result = run_glan(
        "check", "--base-url", llama.base_url, "--api-key", "none", "--model", BUNDLED_ALIAS
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready: a run will ask for JSON as json_object+schema" in result.stdout
    assert f"'{BUNDLED_ALIAS}' is listed" in result.stdout
    assert "tokens/s" in result.stdout


def test_ctrl_c_stops_the_local_server_with_the_run(tmp_path):
    skip_without_llama()
    process = subprocess.Popen(
        [sys.executable, "-m", "glan", "generate", "--out", str(tmp_path / "run"),
         "--local-model", "--disciplines", "Mathematics", "--progress", "log"],
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        lines = []
        while not any("local teacher:" in line for line in lines):
            line = process.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", lines[-1])
        assert url is not None
        time.sleep(1.0)  # the run is under way
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 130, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Run the same command to continue" in rest
    with pytest.raises(OSError):  # nothing listens there any more
        urllib.request.urlopen(url.group(1) + "/v1/models", timeout=5)


def test_a_judge_run_scores_every_pair(llama, bundled_run, tmp_path):
    """glan judge with the real model as judge: every pair gets a score on the rubric."""
    _, finished, _ = bundled_run
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("glan.lock", "*.reserve"))
    config = tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump({"stages": {"judge": {"max_tokens": 200}}}), "utf-8")
    result = glan(
        "judge", str(run_dir), "--base-url", llama.base_url, "--api-key", "none",
        "--judge-model", BUNDLED_ALIAS, "--config", str(config), "--progress", "none",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(run_dir)
    with sqlite3.connect(f"file:{run_dir / 'glan.db'}?mode=ro", uri=True) as db:
        verdicts = [
            yaml.safe_load(r[0])
            for r in db.execute(
                "SELECT result FROM nodes WHERE kind = 'judgement' AND status = 'done'"
            )
        ]
    assert len(verdicts) == len(rows) >= 1
    assert all(1 <= v["overall"] <= 10 and isinstance(v["reason"], str) for v in verdicts)
    assert "judged (mean score" in result.stdout
