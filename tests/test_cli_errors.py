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
        pytest.skip("running as root without setpriv: a read-only directory cannot be tested")
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
