"""The ``glan`` command as a user runs it: a subprocess talking real HTTP to the fake teacher."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import API_KEY, cli_env, read_rows
from glan.ids import canonical_json
from glan.llm.types import unpack_request
from glan.run.store import Store


def generate_args(run_dir: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "generate",
        "--out",
        str(run_dir),
        "--base-url",
        base_url,
        "--api-key",
        API_KEY,
        "--disciplines",
        "Mathematics,Chemistry",
        "--subject-queries",
        "2",
        "--max-subjects-per-discipline",
        "2",
        "--questions-per-syllabus",
        "3",
        "--progress",
        "log",
        *extra,
    ]


def assert_clean_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_generate_then_status(tmp_path, teacher, cli):
    result = cli(*generate_args(tmp_path, teacher.base_url))
    assert result.returncode == 0, result.stderr
    assert len(read_rows(tmp_path)) == 12
    assert "12 rows" in result.stdout
    assert "[glan" in result.stderr  # plain progress lines when not a terminal

    status = cli("status", str(tmp_path))
    assert status.returncode == 0
    for stage in ("subjects", "syllabus", "question", "answer"):
        assert stage in status.stdout
    assert "12 rows" in status.stdout


def test_unknown_discipline(tmp_path, teacher, cli):
    result = cli(*generate_args(tmp_path, teacher.base_url)[:-2], "--disciplines", "Mathmatics")
    assert_clean_error(result, "Mathmatics", "Mathematics")
    assert teacher.request_count == 0


def test_malformed_taxonomy(tmp_path, teacher, cli):
    bad = tmp_path / "tax.yaml"
    bad.write_text("fields:\n  - name: Science\n    children: [\n", encoding="utf-8")
    result = cli(
        "generate",
        "--out",
        str(tmp_path / "run"),
        "--taxonomy",
        str(bad),
        "--base-url",
        teacher.base_url,
    )
    assert_clean_error(result, str(bad))


def test_malformed_config(tmp_path, teacher, cli):
    bad = tmp_path / "config.yaml"
    bad.write_text("challenging_ratio: many\nunknown_option: 1\n", encoding="utf-8")
    result = cli(*generate_args(tmp_path / "run", teacher.base_url), "--config", str(bad))
    assert_clean_error(result, "challenging_ratio", "unknown_option")


def test_unreachable_server_stops_at_once(tmp_path, cli):
    started = time.monotonic()
    result = cli(*generate_args(tmp_path, "http://127.0.0.1:9/v1"))
    assert_clean_error(result, "cannot reach the teacher")
    assert time.monotonic() - started < 60  # not after thousands of retries


def test_wrong_key(tmp_path, teacher, cli):
    args = generate_args(tmp_path, teacher.base_url)
    args[args.index(API_KEY)] = "sk-wrong"
    result = cli(*args)
    assert_clean_error(result, "rejected the API key")
    assert teacher.request_count < 20


def test_no_key_for_openai(tmp_path, cli):
    result = cli("generate", "--out", str(tmp_path), "--disciplines", "Mathematics")
    assert_clean_error(result, "OPENAI_API_KEY")


def test_status_of_a_directory_that_is_no_run(tmp_path, cli):
    assert_clean_error(cli("status", str(tmp_path)), "not a glan run directory")


def test_help_teaches(cli):
    result = cli("generate", "--help")
    assert result.returncode == 0
    for option in ("--out", "--disciplines", "--base-url", "--questions-per-syllabus", "--seed"):
        assert option in result.stdout


def test_sigkill_midway_then_rerun_sends_nothing_twice(tmp_path, teacher):
    teacher.latency = 0.15
    args = generate_args(tmp_path, teacher.base_url, "--concurrency", "4")
    args[args.index("--questions-per-syllabus") + 1] = "8"
    process = subprocess.Popen(
        [sys.executable, "-m", "glan", *args],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    output = tmp_path / "instructions.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if output.exists() and len(output.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = len(read_rows(tmp_path))
    assert 5 <= killed_rows < 32, "the kill should land mid-run"

    store = Store.open(tmp_path)
    stored = {
        canonical_json(unpack_request(blob)["body"])
        for (blob,) in store.db.execute("SELECT request FROM calls")
    }
    store.close()
    teacher.reset()
    teacher.latency = 0.0

    result = subprocess.run(
        [sys.executable, "-m", "glan", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    resent = [b for b in teacher.requests if canonical_json(b) in stored]
    assert resent == [], "a request whose reply was stored went out again"
    rows = read_rows(tmp_path)
    assert len(rows) == 2 * 2 * 8
    assert len({row["id"] for row in rows}) == len(rows)
    # the rows written before the kill are still there, unchanged, at the top
    assert all(json.loads(line) for line in output.read_text().splitlines())
