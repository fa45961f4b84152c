"""``glan judge``: score a run's pairs with a judge model, and verify answers by self-consistency."""

from __future__ import annotations

from typing import Any

import typer

from glan.cli.common import RUN, command, err, option, require_run, takes, user_errors
from glan.cli.run_options import RUN_OPTIONS, run_config
from glan.cli.status import print_review
from glan.config import GenerateConfig
from glan.quality import judge
from glan.run import open_run

# What a review needs of the run's options: the endpoints, the judge, limits, prices.
_TAKES = (
    "model",
    "answer_model",
    "base_url",
    "api_key",
    "config",
    "judge_model",
    "judge_base_url",
    "judge_api_key",
    "verify",
    "concurrency",
    "rpm",
    "tpm",
    "max_retries",
    "batch",
    "prices",
    "prompts_dir",
    "language",
)
OPTIONS = [p for p in RUN_OPTIONS if p.name in _TAKES]
OWN = [
    option(
        "no_judge",
        bool,
        "--no-judge",
        default=False,
        help="Only verify (with --verify N): ask the judge nothing.",
    ),
    option("progress", str, default="auto", help="auto, live, log or none."),
]


def register(app: typer.Typer) -> None:
    command(app, "judge")(judge_command)


@takes([RUN, *OPTIONS, *OWN])
def judge_command(**options: Any) -> None:
    """Score every pair of RUN on GLAN's rubric, and verify answers by self-consistency.

    The judge (--judge-model, at its own --judge-base-url and --judge-api-key if given) scores
    each pair 1-10: the question is self-contained, exercises its class sessions and key
    concepts and suits the level; the answer is correct and complete; overall, with a reason.
    --verify N asks N more answers per question and records how many reach the pair's final
    answer. Everything is stored in RUN/glan.db: stop it and run it again, nothing is asked
    twice. Then glan curate --min-score S --min-agreement A removes the weak pairs, and
    glan report shows the scores per discipline. Defaults come from the run's own settings.
    """
    run, progress, no_judge = (options.pop(name) for name in ("run", "progress", "no_judge"))
    with user_errors(
        stopped=lambda: f"stopped; every reply is stored. Run it again ({run}).", rerun=True
    ):
        require_run(run)
        config = _config(run, options).model_copy(update={"judge": not no_judge})
        result = judge(run, config, progress=progress)
    print_review(result)
    if result.failed:
        err.print(f"[yellow]{result.failed} review items failed; run the same command again.")
        raise typer.Exit(3)


def _config(run_dir: str, options: dict[str, Any]) -> GenerateConfig:
    """The run's last settings (its teacher and models), then --config, then the flags."""
    handle = open_run(run_dir)
    try:
        earlier = handle.store.last_invocation()
    finally:
        handle.close()
    given = run_config(options)
    flags = given.model_dump(exclude_unset=True)  # keys are not kept: they come from here only
    keys = {"api_key": given.api_key, "judge_api_key": given.judge_api_key}
    return GenerateConfig.model_validate({**earlier, **flags, **keys})
