"""What a big run asks before it starts: a run with no spending cap whose plan is estimated above
``CONFIRM_ABOVE`` dollars (or ``CONFIRM_ABOVE_CALLS`` calls at unknown prices) must be confirmed,
once per run directory and plan (``glan generate --yes``, or a ``--max-cost``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glan.config import ConfigError, GenerateConfig
from glan.costs.estimate import estimate
from glan.costs.prices import PriceTable
from glan.run import is_run
from glan.run.parts import RunFilesError, StateDir
from glan.run.store import Store, StoreError
from glan.taxonomy import Discipline

# A run with no cap asks to be confirmed when its plan is estimated above this (USD); when a model
# is missing from the price table (no estimate), when it plans more than this many calls.
CONFIRM_ABOVE = 10.0
CONFIRM_ABOVE_CALLS = 20_000
CONFIRMED_META = "confirmed_plan"  # glan.db meta: the plan a user confirmed for this run


class NotConfirmed(ConfigError):
    """A big run with no cap was not confirmed; nothing was sent."""


def plan_cost(config: GenerateConfig, disciplines: list[Discipline]) -> tuple[float | None, int]:
    """(USD, None when a model has no price; calls) of a run's plan."""
    plan = estimate(config, disciplines, PriceTable.load(config.prices))
    costs = [s.batch_cost if config.batch else s.cost for s in plan]
    usd = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    return usd, sum(s.calls for s in plan)


def needs_confirming(
    config: GenerateConfig,
    out: str | Path,
    disciplines: list[Discipline],
    planned: tuple[float | None, int],
) -> str | None:
    cost, calls = planned
    if config.max_cost is not None:
        return None
    if cost is not None and cost <= CONFIRM_ABOVE:
        return None
    if cost is None and calls <= CONFIRM_ABOVE_CALLS:
        return None
    confirmed = confirmed_plan(out)
    if confirmed is not None and calls <= confirmed.get("calls", 0):
        earlier = confirmed.get("cost")
        if cost is None or (earlier is not None and cost <= earlier * 1.001 + 0.005):
            return None
    count = plural_disciplines(len(disciplines))
    what = f"the whole taxonomy ({count})" if config.disciplines is None else count
    if cost is not None:
        return f"this run asks for {what}, estimated at ${cost:,.2f}, and has no --max-cost"
    return (
        f"this run asks for {what}, {calls:,} calls to a model missing from the price table (so"
        " at a cost glan cannot estimate; price it with --prices FILE, at 0 if it is"
        " self-hosted), and has no --max-cost"
    )


def plural_disciplines(count: int) -> str:
    return f"{count:,} discipline{'' if count == 1 else 's'}"


def confirmed_plan(out: str | Path) -> dict[str, Any] | None:
    """The plan a user confirmed for this run directory, if any (read without writing)."""
    if not is_run(out):
        return None
    try:
        store = Store.open(StateDir(str(out)).path, readonly=True)
    except (StoreError, RunFilesError):
        return None  # e.g. a run of an older glan, whose store is upgraded when it runs
    try:
        value = store.get_meta(CONFIRMED_META)
    finally:
        store.close()
    return value if isinstance(value, dict) else None


def record_confirmation(out: str | Path, planned: tuple[float | None, int]) -> None:
    cost, calls = planned
    store = Store.open(StateDir(str(out)).path)
    try:
        store.set_meta(CONFIRMED_META, {"cost": cost, "calls": calls})
    finally:
        store.close()
