"""The ``glan`` command run in the test process (typer's CliRunner): as the user sees it, without
an interpreter start per call. Use the ``cli`` fixture where a real process matters."""

from __future__ import annotations

import subprocess

from typer.testing import CliRunner

from glan.cli import app


def run_glan(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``glan ARGS`` with ``input`` on stdin; an unexpected exception fails the test."""
    result = CliRunner().invoke(app, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["glan", *args], result.exit_code, result.stdout, result.stderr
    )
