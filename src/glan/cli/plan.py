"""A run's cost, said before it starts: its plan, and the confirmation a costly one needs."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from glan import api
from glan.cli.common import err
from glan.config import ConfigError


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
