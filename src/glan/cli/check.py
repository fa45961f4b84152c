"""``glan check``: probe a teacher endpoint before a run spends anything on it (``glan.llm.probe``).

It takes the endpoint options of ``generate`` (``--base-url``, ``--api-key``, ``--model``,
``--structured-output``, ``--config``), prints what it found as a table and exits with 1 and one
line saying what to fix when a run would not get far.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from glan.cli.common import command, fail, option, out, setup_logging, takes, user_errors
from glan.cli.local_model import local_teacher
from glan.config import GenerateConfig, resolve_endpoint
from glan.llm.probe import ProbeReport, probe

CHECK_OPTIONS = [
    option(
        "base_url",
        str | None,
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1. \\[default: $OPENAI_BASE_URL or OpenAI]",
    ),
    option("api_key", str | None, help="API key. \\[default: $OPENAI_API_KEY]"),
    option("model", str | None, help="The model a run would ask. \\[default: the config's]"),
    option(
        "structured_output",
        str | None,
        help="Check only this way of asking for JSON (json_schema, json_object+schema, json+value, prompt). \\[default: auto: try them in order]",
    ),
    option(
        "config",
        Path | None,
        "--config",
        "-c",
        help="A run's YAML config: its base_url, api_key, model and structured_output are checked.",
    ),
    option(
        "local_model",
        str | None,
        "--local-model",
        metavar="[FILE.gguf]",
        help="Check llama.cpp's server with this GGUF (alone: the bundled SmolLM2-135M), started on 127.0.0.1 and stopped after.",
    ),
    option("verbose", bool, "--verbose", "-v", default=False, help="Log each request."),
]

_MARK = {"ok": "[green]ok[/green]", "warn": "[yellow]note[/yellow]", "fail": "[red]fail[/red]"}


def register(app: typer.Typer) -> None:
    command(app, "check")(check)


@takes(CHECK_OPTIONS)
def check(**options: Any) -> None:
    """Check a teacher endpoint before a run spends money on it.

    A few tiny requests: the server answers, takes the key and lists the model; the latency and
    tokens per second of a tiny call; which way of asking for JSON it takes (json_schema,
    json_object+schema, json+value or the schema in the prompt, each reply checked against a
    small schema); the rate-limit headers it sends. Exits with 1 and one line saying what to fix
    when a run would not get far.
    """
    setup_logging(options.pop("verbose"))
    local_model = options.pop("local_model")
    with user_errors(), local_teacher(local_model, options):
        settings = GenerateConfig.load(
            options.pop("config"), **{k: v for k, v in options.items() if v is not None}
        )
        base_url, api_key = resolve_endpoint(settings.base_url, settings.api_key)
        report = asyncio.run(
            probe(
                base_url,
                api_key,
                settings.model,
                structured=settings.structured_output,
                timeout=settings.timeout,
            )
        )
    print_report(report)
    if report.problem is not None:
        fail(report.problem)


def print_report(report: ProbeReport) -> None:
    table = Table(title=f"glan check: {escape(report.model)} at {escape(report.base_url)}")
    table.add_column("check")
    table.add_column("")
    table.add_column("what was found", overflow="fold")
    for finding in report.findings:
        table.add_row(finding.name, _MARK.get(finding.state, finding.state), escape(finding.detail))
    out.print(table)
    if report.problem is None:
        mode = report.mode or "auto"
        out.print(f"ready: a run will ask for JSON as {mode} (--structured-output {mode})")
