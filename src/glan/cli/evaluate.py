"""``glan eval``: GLAN-Test, two models judged pairwise on a run's held-out questions."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from glan.cli.common import RUN, command, err, option, require_run, takes, user_errors
from glan.cli.run_options import RUN_OPTIONS, run_config
from glan.loop.eval import EvalPlan, EvalResult, Side, evaluate

_TAKES = (
    "config",
    "judge_model",
    "judge_base_url",
    "judge_api_key",
    "concurrency",
    "rpm",
    "tpm",
    "max_retries",
    "batch",
    "prices",
    "prompts_dir",
)
OPTIONS = [
    option(
        "a",
        str,
        "--a",
        default=...,
        help="Candidate A: its OpenAI-compatible endpoint, e.g. http://localhost:8001/v1 (your trained model).",
    ),
    option("a_model", str, default="default", help="The model name candidate A's server serves."),
    option("a_api_key", str | None, help="Candidate A's API key, if its server wants one."),
    option(
        "b",
        str,
        "--b",
        default=...,
        help="Candidate B: its endpoint (the base model, or another run's).",
    ),
    option("b_model", str, default="default", help="The model name candidate B's server serves."),
    option("b_api_key", str | None, help="Candidate B's API key, if its server wants one."),
    option(
        "per_discipline",
        int,
        default=50,
        help="Held-out questions per discipline: the test split of glan export --test-per-discipline N (the paper: 50).",
    ),
    option("seed", int, default=0, help="The split's seed, as given to glan export --seed."),
    option(
        "name",
        str | None,
        help="A name for this comparison (its results: RUN/eval/NAME.json). \\[default: 'A-MODEL vs B-MODEL']",
    ),
    option("progress", str, default="auto", help="auto, live, log or none."),
    *(p for p in RUN_OPTIONS if p.name in _TAKES),
]


def register(app: typer.Typer) -> None:
    command(app, "eval")(eval_command)


@takes([RUN, *OPTIONS])
def eval_command(**options: Any) -> None:
    """GLAN-Test: two models answer the run's held-out questions, a judge scores both.

    The questions are the test split glan export --test-per-discipline N --seed S wrote (so a
    model trained on that export never saw them). Candidates A and B are any OpenAI-compatible
    servers (vllm serve, llama.cpp, ...); the judge (--judge-model, at --judge-base-url) scores
    both answers 1-10 twice, A first then B first, as the paper did. The table gives each side's
    mean score, wins, ties and losses per field and overall, and the order effect (how much more
    the judge gives whichever answer it reads first). Stored in RUN/glan.db: stop it and run it
    again, nothing is asked twice.
    """
    run = options.pop("run")
    sides = [
        Side(options.pop(s), options.pop(f"{s}_model"), options.pop(f"{s}_api_key")) for s in "ab"
    ]
    extra = {k: options.pop(k) for k in ("per_discipline", "seed", "name", "progress")}
    with user_errors(
        stopped=lambda: f"stopped; every reply is stored. Run it again ({run}).", rerun=True
    ):
        require_run(run)
        config = run_config(options)
        result = evaluate(run, *sides, config, plan=_print_plan, **extra)
    print_eval(result)
    if result.failed or result.pending:
        err.print(
            f"[yellow]{result.pending} questions not judged in both orders yet; run the same command again."
        )
        raise typer.Exit(3)


def _print_plan(plan: EvalPlan) -> None:
    cost = f", about ${plan.cost:,.2f} at list prices" if plan.cost is not None else ""
    err.print(f"plan: {plan.questions:,} held-out questions, {plan.calls:,} calls at most{cost}")


def print_eval(result: EvalResult) -> None:
    table = Table(
        title=f"GLAN-Test: A = {result.a.model} vs B = {result.b.model} (judge {result.judge})"
    )
    for column in ("", "questions", "A mean", "B mean", "A wins", "ties", "B wins", "order effect"):
        table.add_column(column, justify="left" if not column else "right")

    def row(label: str, s: dict[str, Any]) -> None:
        table.add_row(
            label,
            f"{s['questions']:,}",
            f"{s['mean_a']:.2f}",
            f"{s['mean_b']:.2f}",
            f"{s['wins_a']:,}",
            f"{s['ties']:,}",
            f"{s['wins_b']:,}",
            f"{s['order_effect']:+.2f}",
        )

    for name, summary in result.fields.items():
        row(name, summary)
    row("overall", result.overall)
    Console().print(table)
    if result.saved_to:
        print(f"per discipline and field: {result.saved_to}")
    print(f"{result.requests:,} requests, ${result.cost:,.2f}")
