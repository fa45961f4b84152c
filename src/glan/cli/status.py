"""``glan status``: what a run holds, and what it has cost (``glan generate`` ends with it too)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from glan import api
from glan.cli.common import command, user_errors
from glan.publish.coverage import SubjectCoverage
from glan.quality import ReviewSummary


def register(app: typer.Typer) -> None:
    command(app, "status")(status)


def status(
    run: Annotated[str, typer.Argument(help="A run directory (a Ray run's may be a URI).")],
    coverage: Annotated[
        bool,
        typer.Option(
            "--coverage",
            help="Also, per subject, how many questions drew on each class session and key concept.",
        ),
    ] = False,
) -> None:
    """Per-stage counts (done, pending, failed), requests sent and tokens of a run."""
    with user_errors():
        result = api.status(run)
        subjects = api.coverage(run) if coverage else None
    print_status(result)
    if subjects is not None:
        print_coverage(subjects)


def print_coverage(subjects: list[SubjectCoverage]) -> None:
    table = Table(title="coverage: questions per class session and key concept")
    for column in (
        "discipline",
        "subject",
        "questions",
        "sessions used",
        "concepts used",
        "unused sessions",
    ):
        table.add_column(
            column,
            justify="right"
            if column in ("questions", "sessions used", "concepts used")
            else "left",
        )
    for s in subjects:
        unused = [title for title, n in s.sessions.items() if not n]
        table.add_row(
            s.discipline,
            f"{s.subject} ({s.level})",
            f"{s.questions:,}",
            f"{s.sessions_used}/{len(s.sessions)}",
            f"{s.concepts_used}/{len(s.concepts)}",
            "; ".join(unused[:3]) + (f" (+{len(unused) - 3})" if len(unused) > 3 else ""),
        )
    Console().print(table)


def print_status(result: api.RunStatus) -> None:
    table = Table(title=f"glan run {result.run_dir}")
    cached = any(s.tokens_cached for s in result.stages.values())  # the provider reports it
    columns = ["stage", "done", "pending", "failed", "requests", "tokens in", "tokens out", "$"]
    if cached:
        columns.insert(columns.index("tokens out"), "cached")
    for column in columns:
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, s in result.stages.items():
        cells = {
            "stage": name,
            **{c: f"{v:,}" for c, v in zip(columns[1:6], _counts(s), strict=True)},
            "cached": f"{s.cached_share:.0%}" if s.tokens_in else "",
            "tokens out": f"{s.tokens_out:,}",
            "$": f"{s.cost:,.2f}",
        }
        table.add_row(*(cells[c] for c in columns))
    console = Console()
    if not console.is_terminal:  # a pipe or a file: no need to squeeze the table into 80
        console.width = max(console.width, 100)
    console.print(table)
    share = (
        f"; {result.cached_share:.0%} of the prompt tokens were read from the provider's cache"
        if cached
        else ""
    )
    print(f"{result.rows:,} rows in {result.dataset}, ${result.cost:,.2f} spent{share}")
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


def _counts(s: api.StageStatus) -> tuple[int, ...]:
    return (s.done, s.pending, s.failed, s.requests, s.tokens_in)


def print_review(result: ReviewSummary) -> None:
    table = Table(title="review")
    table.add_column("what")
    table.add_column("pairs", justify="right")
    score = f" (mean score {result.mean_score:.1f})" if result.mean_score is not None else ""
    rows = [
        ("in the run", result.rows),
        (f"judged{score}", result.judged),
        ("judged below 5", result.low),
        ("verified", result.verified),
        ("contradicted by most samples", result.contradicted),
        ("no single final answer (not scored)", result.no_single_answer),
        ("failed (run again to retry)", result.failed),
    ]
    for what, count in rows:
        table.add_row(what, f"{count:,}")
    Console().print(table)
    print(f"{result.requests:,} review requests, ${result.cost:,.2f}")
