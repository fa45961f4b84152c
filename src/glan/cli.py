"""The ``glan`` command."""

from __future__ import annotations

import logging
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from glan import api
from glan.config import ConfigError, GenerateConfig
from glan.llm.errors import FatalLLMError
from glan.store import StoreError
from glan.taxonomy import TaxonomyError

app = typer.Typer(
    help=(
        "Make instruction-tuning data almost from scratch, the GLAN way: a taxonomy of human"
        " knowledge -> subjects per discipline -> a syllabus per subject -> homework questions"
        " from sampled class sessions and key concepts -> answers. Any OpenAI-compatible teacher"
        " (OpenAI, Azure OpenAI, vLLM, SGLang, Ollama, llama.cpp)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True)

# Errors a user can fix: one line, no traceback, a non-zero exit.
USER_ERRORS = (ConfigError, TaxonomyError, StoreError, FatalLLMError)


def _list(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


@app.command()
def generate(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run directory (created if missing; an existing one is continued)."
        ),
    ],
    disciplines: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated disciplines (or fields, or 'Field > Sub > Discipline' paths) to generate; default: all in the taxonomy."
        ),
    ] = None,
    taxonomy: Annotated[
        Path | None,
        typer.Option(
            help="Your taxonomy YAML; default: the bundled one (the paper's 126 disciplines)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Teacher model for subjects, syllabi and questions. [default: gpt-4o-mini]"
        ),
    ] = None,
    answer_model: Annotated[
        str | None, typer.Option(help="Model for the answers. [default: --model]")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1. [default: $OPENAI_BASE_URL or OpenAI]"
        ),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key. [default: $OPENAI_API_KEY]")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML file with any of these options and per-stage model/temperature/top_p/max_tokens; flags override it.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of every sample: same config and seed, same ids and prompts. [default: 0]"
        ),
    ] = None,
    subject_queries: Annotated[
        int | None,
        typer.Option(
            help="Subject-list queries per discipline, merged and de-duplicated. [default: 10]"
        ),
    ] = None,
    max_subjects_per_discipline: Annotated[
        int | None,
        typer.Option(help="Keep at most this many subjects per discipline. [default: all]"),
    ] = None,
    questions_per_syllabus: Annotated[
        int | None, typer.Option(help="Questions sampled from each syllabus. [default: 10]")
    ] = None,
    challenging_ratio: Annotated[
        float | None,
        typer.Option(
            help="Share of 'challenging' questions (two sessions) vs 'basic' (one). [default: 0.5]"
        ),
    ] = None,
    language: Annotated[
        str | None, typer.Option(help="Language of questions and answers, e.g. Korean or ko.")
    ] = None,
    single_turn: Annotated[
        bool,
        typer.Option(
            "--single-turn",
            help="Ask for JSON at once instead of the paper's free text + conversion turn (cheaper, often worse).",
        ),
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight across all stages. [default: 64]")
    ] = None,
    rpm: Annotated[
        float | None,
        typer.Option(
            help="Requests per minute per model. [default: learnt from the provider's x-ratelimit headers]"
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(
            help="Tokens per minute per model. [default: learnt from the provider's x-ratelimit headers]"
        ),
    ] = None,
    progress: Annotated[str, typer.Option(help="auto, live, log or none.")] = "auto",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log retries and fallbacks.")
    ] = False,
) -> None:
    """Generate question-answer pairs into OUT/instructions.jsonl.

    Stop it at any moment (Ctrl-C, kill -9) and run the same command again: it continues where it
    stopped and never sends a request whose reply is already stored.
    """
    _logging(verbose)
    try:
        settings = GenerateConfig.load(
            config,
            model=model,
            answer_model=answer_model,
            base_url=base_url,
            api_key=api_key,
            taxonomy=taxonomy,
            disciplines=_list(disciplines),
            seed=seed,
            subject_queries=subject_queries,
            max_subjects_per_discipline=max_subjects_per_discipline,
            questions_per_syllabus=questions_per_syllabus,
            challenging_ratio=challenging_ratio,
            language=language,
            single_turn=single_turn or None,
            concurrency=concurrency,
            rpm=rpm,
            tpm=tpm,
        )
        if progress not in ("auto", "live", "log", "none"):
            raise ConfigError(f"--progress must be auto, live, log or none, not {progress!r}")
        result = api.generate(settings, out, progress=progress)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        err.print(
            f"stopped; everything received is stored. Run the same command to continue ({out})."
        )
        raise typer.Exit(130) from None
    except USER_ERRORS as error:
        _fail(str(error))
    except (OSError, sqlite3.Error) as error:
        _fail(f"{error}; nothing received is lost: fix it and run the same command again")
    _print_status(result)
    if result.failed:
        err.print(
            f"[yellow]{result.failed} items failed; run the same command again to retry them."
        )
        raise typer.Exit(3)


@app.command()
def status(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Per-stage counts (done, pending, failed), requests sent and tokens of a run."""
    try:
        result = api.status(run)
    except USER_ERRORS as error:
        _fail(str(error))
    _print_status(result)


def _print_status(result: api.RunStatus) -> None:
    table = Table(title=f"glan run {result.run_dir}")
    for column in ("stage", "done", "pending", "failed", "requests", "tokens in", "tokens out"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, s in result.stages.items():
        table.add_row(
            name,
            *(
                f"{v:,}"
                for v in (s.done, s.pending, s.failed, s.requests, s.tokens_in, s.tokens_out)
            ),
        )
    Console().print(table)
    print(f"{result.rows:,} rows in {result.run_dir / 'instructions.jsonl'}")
    for kind, node_id, error in result.errors[:5]:
        print(f"failed {kind} {node_id}: {error}")


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    app()
