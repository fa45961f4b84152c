"""Shared fixtures: a fake OpenAI-compatible teacher on 127.0.0.1, small run configs, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from glan.config import GenerateConfig
from glan.testing.fake_teacher import FakeTeacher

API_KEY = "sk-test"


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def make_config(teacher: FakeTeacher) -> Callable[..., GenerateConfig]:
    """A small run: 2 disciplines x 2 subjects x 3 questions = 12 pairs."""

    def make(**overrides: Any) -> GenerateConfig:
        values: dict[str, Any] = {
            "base_url": teacher.base_url,
            "api_key": API_KEY,
            "model": "teacher-big",
            "answer_model": "teacher-small",
            "disciplines": ["Mathematics", "Chemistry"],
            "subject_queries": 2,
            "max_subjects_per_discipline": 2,
            "questions_per_syllabus": 3,
            "concurrency": 8,
            "retry_backoff": 0.01,
            "timeout": 5,
        }
        values.update(overrides)
        return GenerateConfig(**values)

    return make


def write_config(path: Path, config: GenerateConfig) -> Path:
    """``config`` as a YAML file for ``--config``, with the test key."""
    values = config.model_dump(mode="json", exclude_none=True)
    values["api_key"] = API_KEY
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "instructions.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (it was bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glan", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
