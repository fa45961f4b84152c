"""The ``glan`` command."""

from __future__ import annotations

import inspect
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from glan import api
from glan.config import ConfigError, GenerateConfig
from glan.costs.prices import PriceTable
from glan.llm.errors import FatalLLMError
from glan.run.parts import RunFilesError
from glan.run.store import StoreError
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
USER_ERRORS = (ConfigError, TaxonomyError, StoreError, FatalLLMError, RunFilesError)


def _list(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


@app.command()
def generate(
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Run directory (created if missing; an existing one is continued). With --engine ray also a URI such as s3://bucket/runs/big.",
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
            help="Teacher model for subjects, syllabi and questions. \\[default: gpt-4o-mini]"
        ),
    ] = None,
    answer_model: Annotated[
        str | None, typer.Option(help="Model for the answers. \\[default: --model]")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1. \\[default: $OPENAI_BASE_URL or OpenAI]"
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key. \\[default: $OPENAI_API_KEY]")
    ] = None,
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
            help="Seed of every sample: same config and seed, same ids and prompts. \\[default: 0]"
        ),
    ] = None,
    subject_queries: Annotated[
        int | None,
        typer.Option(
            help="Subject-list queries per discipline, merged and de-duplicated. \\[default: 10]"
        ),
    ] = None,
    max_subjects_per_discipline: Annotated[
        int | None,
        typer.Option(help="Keep at most this many subjects per discipline. \\[default: all]"),
    ] = None,
    questions_per_syllabus: Annotated[
        int | None, typer.Option(help="Questions sampled from each syllabus. \\[default: 10]")
    ] = None,
    challenging_ratio: Annotated[
        float | None,
        typer.Option(
            help="Share of 'challenging' questions (two sessions) vs 'basic' (one). \\[default: 0.5]"
        ),
    ] = None,
    language: Annotated[
        str | None, typer.Option(help="Language of questions and answers, e.g. Korean or ko.")
    ] = None,
    syllabus_language: Annotated[
        str | None,
        typer.Option(
            help="Language of subjects and syllabi (what questions are drawn from). \\[default: English]"
        ),
    ] = None,
    prompts_dir: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="Directory of your own prompt templates: a NAME.j2 there replaces the bundled one (glan prompts export DIR copies them out).",
        ),
    ] = None,
    allow_unreviewed: Annotated[
        bool,
        typer.Option(
            "--allow-unreviewed",
            help="Generate from a taxonomy even if some nodes are unreviewed (see glan taxonomy review).",
        ),
    ] = False,
    single_turn: Annotated[
        bool,
        typer.Option(
            "--single-turn",
            help="Ask for JSON at once instead of the paper's free text + conversion turn (cheaper, often worse).",
        ),
    ] = False,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Send questions and answers through the provider's batch API (OpenAI, Azure OpenAI): half price, results within 24 h. Safe to stop and rerun (docs/batch.md).",
        ),
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            help='local: one process, everything in OUT/glan.db and OUT/instructions.jsonl. ray: questions and answers spread over a Ray cluster, pairs as Parquet in OUT/rows (pip install "glan\\[ray]"; docs in the README). \\[default: local]'
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: the cluster to join ('auto' for the one this machine is in). \\[default: start Ray on this machine]"
        ),
    ] = None,
    ray_workers: Annotated[
        int | None,
        typer.Option(
            help="With --engine ray: worker actors for questions, and as many for answers; --concurrency is split evenly among them all. \\[default: 2]",
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight across all stages. \\[default: 64]")
    ] = None,
    rpm: Annotated[
        float | None,
        typer.Option(
            help="Requests per minute per model. \\[default: learnt from the provider's x-ratelimit headers]"
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(
            help="Tokens per minute per model. \\[default: learnt from the provider's x-ratelimit headers]"
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
    options = dict(locals())
    _logging(options.pop("verbose"))
    mode = options.pop("progress")
    settings: GenerateConfig | None = None
    try:
        if mode not in ("auto", "live", "log", "none"):
            raise ConfigError(f"--progress must be auto, live, log or none, not {mode!r}")
        settings = _config(options)
        _print_plan(api.plan(settings), brief=True, batched=settings.batch)
        result = api.generate(settings, out, progress=mode)
    except KeyboardInterrupt:
        kept = "everything received is stored"
        if settings is not None and settings.engine == "ray":  # workers write every few seconds
            kept = "everything received up to the workers' last write (a few seconds) is stored"
        err.print(f"stopped; {kept}. Run the same command to continue ({out}).")
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


def estimate(**options: Any) -> None:
    """Say what a run will ask for and what it will cost, without sending a request.

    Takes the options of [bold]glan generate[/bold]. Call counts follow from the options (exact
    when --max-subjects-per-discipline caps the subjects); tokens are estimates; prices come from
    the bundled table or --prices FILE. With --out, also what that run has already spent.
    """
    try:
        settings = _config(options)
        _print_plan(api.plan(settings), brief=False)
        out = options.get("out")
        if out is not None and (Path(out) / "glan.db").exists():
            spent = api.status(out, prices=PriceTable.load(settings.prices))
            print(f"already in {out}: {spent.rows:,} rows, ${spent.cost:,.2f} spent")
    except USER_ERRORS as error:
        _fail(str(error))


# estimate takes generate's options, but needs no run directory and runs nothing.
_RUN_ONLY = ("progress", "verbose")
_generate_signature = inspect.signature(generate, eval_str=True)
estimate.__signature__ = _generate_signature.replace(  # type: ignore[attr-defined]
    parameters=[
        p.replace(default=None) if p.name == "out" else p
        for p in _generate_signature.parameters.values()
        if p.name not in _RUN_ONLY
    ]
)
app.command()(estimate)


def _config(options: dict[str, Any]) -> GenerateConfig:
    """The run's config: the --config file, then every flag the user gave."""
    options = dict(options)
    options.pop("out", None)
    path = options.pop("config", None)
    options["disciplines"] = _list(options.get("disciplines"))
    ray = {"address": options.pop("ray_address", None), "workers": options.pop("ray_workers", None)}
    # An unset switch must not override the config file: only True counts.
    config = GenerateConfig.load(
        path, **{k: (None if v is False else v) for k, v in options.items()}
    )
    ray = {key: value for key, value in ray.items() if value is not None}
    if ray:  # validated as if the config file had said it
        values = config.model_dump(mode="json")
        values["ray"].update(ray)
        config = GenerateConfig.load(None, **values, api_key=config.api_key)
    return config


def _print_plan(plan: list[api.StageEstimate], *, brief: bool, batched: bool = False) -> None:
    calls = sum(s.calls for s in plan)
    online = _total(s.cost for s in plan)
    batch = _total(s.batch_cost for s in plan)
    if brief:
        price, label = (batch, "batch prices") if batched else (online, "list prices")
        cost = f", about ${price:,.2f} at {label}" if price is not None else ""
        err.print(f"plan: {calls:,} calls{cost} (glan estimate shows the details)", highlight=False)
        return
    table = Table(title="plan")
    for column in ("stage", "model", "calls", "tokens in", "tokens out", "online $", "batch $"):
        table.add_column(column, justify="left" if column in ("stage", "model") else "right")
    for s in plan:
        table.add_row(
            s.stage,
            s.model,
            f"{s.calls:,}",
            f"{s.tokens_in:,}",
            f"{s.tokens_out:,}",
            _usd(s.cost),
            _usd(s.batch_cost),
        )
    table.add_row("total", "", f"{calls:,}", "", "", _usd(online), _usd(batch))
    Console().print(table)
    if online is None:
        print("n/a: a model missing from the price table (add it with --prices FILE)")


def _total(costs: Any) -> float | None:
    values = list(costs)
    return None if any(v is None for v in values) else sum(values)


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


@app.command()
def status(
    run: Annotated[str, typer.Argument(help="A run directory (a Ray run's may be a URI).")],
) -> None:
    """Per-stage counts (done, pending, failed), requests sent and tokens of a run."""
    try:
        result = api.status(run)
    except USER_ERRORS as error:
        _fail(str(error))
    _print_status(result)


def _print_status(result: api.RunStatus) -> None:
    table = Table(title=f"glan run {result.run_dir}")
    for column in (
        "stage",
        "done",
        "pending",
        "failed",
        "requests",
        "tokens in",
        "tokens out",
        "$",
    ):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, s in result.stages.items():
        counts = (s.done, s.pending, s.failed, s.requests, s.tokens_in, s.tokens_out)
        table.add_row(name, *(f"{v:,}" for v in counts), f"{s.cost:,.2f}")
    Console().print(table)
    print(f"{result.rows:,} rows in {result.dataset}, ${result.cost:,.2f} spent")
    for kind, node_id, error in result.errors[:5]:
        print(f"failed {kind} {node_id}: {error}")
    if result.removed:
        rows = sum(result.removed.values())
        gone = len(result.removed)
        print(
            f"note: {rows:,} of these rows come from {gone} discipline{'s' * (gone != 1)} no longer"
            " in the taxonomy (removed, dropped or renamed); nothing more is asked for them, and"
            " their rows stay in instructions.jsonl:"
        )
        for path, count in sorted(result.removed.items()):
            print(f"  {path}: {count:,} rows")


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


from glan.cli.taxonomy import register  # noqa: E402 - the taxonomy and prompts command groups

register(app)
from glan.cli.data import register as register_data  # noqa: E402 - curate, export, report

register_data(app)


def main() -> None:
    app()
