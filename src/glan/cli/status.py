"""``glan status``: what a run holds, and what it has cost (``glan generate`` ends with it too)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from glan import api
from glan.cli.common import command, user_errors


def register(app: typer.Typer) -> None:
    command(app, "status")(status)


def status(
    run: Annotated[str, typer.Argument(help="A run directory (a Ray run's may be a URI).")],
) -> None:
    """Per-stage counts (done, pending, failed), requests sent and tokens of a run."""
    with user_errors():
        result = api.status(run)
    print_status(result)


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
