"""``glan generate`` and ``glan estimate``: a run, and what it would cost.

Both take the options of ``glan.cli.run_options`` and print the plan of ``glan.cli.plan``;
``generate`` asks first when that plan is costly, and with ``--local-model`` runs against
``glan.cli.local_model``'s server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from glan import api
from glan.cli.common import command, err, setup_logging, takes, user_errors
from glan.cli.local_model import capped_for_the_bundled_model, local_teacher
from glan.cli.plan import confirm, print_plan
from glan.cli.run_options import OUT, PROGRESS_MODES, RUN_ONLY, RUN_OPTIONS, run_config
from glan.cli.status import print_review, print_status
from glan.config import ConfigError, GenerateConfig
from glan.costs.prices import PriceTable
from glan.llm.local_server import BUNDLED_GGUF


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


CAPPED_EXIT = 4  # the run stopped before it would pass --max-cost


def capped_line(result: api.RunStatus) -> str:
    pending = sum(stage.pending for stage in result.stages.values())
    return (
        f"stopped at the cost cap: ${result.cost:,.2f} spent of --max-cost"
        f" ${result.max_cost or 0:,.2f}, and the next request could have passed it;"
        f" {pending:,} items wait. Run the same command with a higher --max-cost to continue."
    )
