"""The Python API: what the CLI does, callable from a script or a notebook."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glan.config import ConfigError, GenerateConfig, resolve_endpoint
from glan.costs.budget import Budget, CappedClient, require_prices, sequels
from glan.costs.confirm import (
    NotConfirmed,
    needs_confirming,
    plan_cost,
    record_confirmation,
)
from glan.costs.estimate import WIDE_STAGES, StageEstimate, estimate
from glan.costs.prices import PriceTable, StageSpend, Usage, spend_by_stage, total_spent
from glan.costs.progress import LABELS, TURN_STAGES, ProgressMode, RunStats, display_for
from glan.engine.local import Limits, LocalEngine
from glan.engine.teacher import Client
from glan.llm.batch.client import BatchClient
from glan.llm.client import OpenAIClient
from glan.llm.negotiation import stored_negotiator
from glan.prompts import prompts_for
from glan.publish.coverage import SubjectCoverage
from glan.publish.coverage import coverage as subject_coverage
from glan.quality import ReviewSummary, review
from glan.run import Run, is_run, open_run
from glan.run.batches import SqliteBatchRecords
from glan.run.jsonl import OUTPUT_NAME, JsonlOutput, OutputWriteError
from glan.run.lock import run_lock
from glan.run.parts import StateDir
from glan.run.space import RESERVE_NAME, OutOfSpace, is_full, out_of_space, reserve_size
from glan.run.store import DB_NAME, TURNS_META, Store, StoreError, StoreWriteError
from glan.stages.pipeline import Pipeline
from glan.stages.review import ReviewWorkflow
from glan.taxonomy import Discipline, Taxonomy


@dataclass
class StageStatus:
    done: int
    pending: int
    failed: int
    requests: int
    tokens_in: int
    tokens_out: int
    cost: float
    tokens_cached: int = 0  # of tokens_in, read from the provider's prefix cache

    @property
    def cached_share(self) -> float:
        return self.tokens_cached / self.tokens_in if self.tokens_in else 0.0


@dataclass
class RunStatus:
    run_dir: str
    stages: dict[str, StageStatus]
    rows: int
    errors: list[tuple[str, str, str]]
    # rows of disciplines no longer in the taxonomy (removed or renamed), by discipline path
    removed: dict[str, int] = field(default_factory=dict)
    dataset: str = ""  # where the pairs are: instructions.jsonl, or a Ray run's rows/
    review: ReviewSummary | None = None  # with --judge or --verify N
    # the run stopped before it would pass its cap (--max-cost, which was ``max_cost``)
    capped: bool = False
    max_cost: float | None = None

    @property
    def complete(self) -> bool:
        return all(s.pending == 0 and s.failed == 0 for s in self.stages.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.stages.values())

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.stages.values())

    @property
    def cached_share(self) -> float:
        """The share of all prompt tokens the provider read from its prefix cache."""
        tokens_in = sum(s.tokens_in for s in self.stages.values())
        cached = sum(s.tokens_cached for s in self.stages.values())
        return cached / tokens_in if tokens_in else 0.0


def generate(
    config: GenerateConfig,
    out: str | Path,
    *,
    progress: ProgressMode = "auto",
    confirmed: bool = False,
) -> RunStatus:
    """Run (or continue) the pipeline into ``out``; returns the run's status when it stops.

    A big run with no cap (see ``confirmation_needed``) starts only when ``confirmed``.
    In a notebook, where an event loop is already running, use ``await agenerate(...)``.
    """
    return asyncio.run(agenerate(config, out, progress=progress, confirmed=confirmed))


async def agenerate(
    config: GenerateConfig,
    out: str | Path,
    *,
    progress: ProgressMode = "none",
    confirmed: bool = False,
) -> RunStatus:
    base_url, api_key = resolve_endpoint(config.base_url, config.api_key)
    taxonomy = _taxonomy(config)
    disciplines = taxonomy.select(config.disciplines)
    planned = plan_cost(config, disciplines)
    unconfirmed = needs_confirming(config, out, disciplines, planned)
    if unconfirmed is not None and not confirmed:
        raise NotConfirmed(
            f"{unconfirmed}: confirm it (glan generate --yes; generate(..., confirmed=True)) or"
            " cap it (--max-cost USD; max_cost in the config)"
        )
    with run_lock(StateDir(str(out)).path, "generate"):  # one writer per run directory
        if unconfirmed is not None:  # confirmed: a rerun of this plan does not ask again
            record_confirmation(out, planned)
        if config.engine == "ray":
            result = await _generate_on_ray(
                config, str(out), taxonomy, disciplines, (base_url, api_key), progress
            )
        else:
            result = await _generate_locally(
                config, Path(out), taxonomy, disciplines, (base_url, api_key), progress
            )
        if config.judge or config.verify:  # --judge, --verify N: the review, on the same lock
            result.review = await review(out, config, progress=progress)
        return result


async def _generate_locally(
    config: GenerateConfig,
    run_dir: Path,
    taxonomy: Taxonomy,
    disciplines: list[Discipline],
    endpoint: tuple[str, str | None],
    progress: ProgressMode,
) -> RunStatus:
    base_url, api_key = endpoint
    store = _open_store(run_dir, config)
    engine: LocalEngine | None = None
    try:
        _check_turns(store, config, str(run_dir))
        stats = _begin(store, config, taxonomy)
        output = JsonlOutput(run_dir / OUTPUT_NAME)
        try:
            output.open(store)
        except OSError as error:
            raise out_of_space(run_dir, OUTPUT_NAME, error, sent=False) from None
        budget = _budget(config, store.usage(), stats.prices)
        # the structured mode found by an earlier run on this endpoint is used without probing
        negotiator = stored_negotiator(config.structured_output, base_url, store)
        client = OpenAIClient.for_settings(
            config, base_url, api_key, config.limits(), negotiator=negotiator
        )
        # --batch: the wide stages go through the provider's batch API, the others stay online.
        batch = None
        if config.batch:
            batch = BatchClient.for_config(config, base_url, api_key, SqliteBatchRecords(store))
        async with client, batch or contextlib.nullcontext():
            pipeline = Pipeline(config)
            batched = None
            if batch is not None:
                batched = _capped(batch, budget, stats.prices, batch=True)
            engine = LocalEngine(
                pipeline,
                Limits.of(config),
                prompts_for(config.prompts_dir),
                store,
                _capped(client, budget, stats.prices),
                output,
                stats,
                display_for(progress, stats),
                batch_clients=dict.fromkeys(WIDE_STAGES, batched) if batched else None,
                budget=budget,
            )
            engine.prepare(pipeline.roots(disciplines))
            try:
                await engine.run()
            finally:
                output.close()
        store.commit()
    except (StoreWriteError, OutputWriteError) as error:
        raise _stopped_writing(store, run_dir, error, engine) from None
    finally:
        store.close()
    assert engine is not None
    return _capped_status(status(run_dir, stats.prices), config, engine.capped)


def _open_store(where: Path, config: GenerateConfig) -> Store:
    """The run's store, with room set aside to finish in when the disk fills."""
    try:
        store = Store.open(where)
    except StoreError as error:
        if is_full(error):
            raise out_of_space(where, DB_NAME, error, sent=False) from None
        raise
    try:
        store.reserve_space(reserve_size(config.concurrency))
    except OSError as error:
        store.close()
        raise out_of_space(where, RESERVE_NAME, error, sent=False) from None
    return store


def _stopped_writing(
    store: Store,
    where: Path,
    error: StoreWriteError | OutputWriteError,
    engine: LocalEngine | None,
) -> OutOfSpace:
    """A run that could not write: what it received goes in with the reserve given back; the
    one line that says where, what was kept, and to rerun."""
    lost = store.rescue()
    written = DB_NAME if isinstance(error, StoreWriteError) else OUTPUT_NAME
    abandoned = engine.abandoned if engine is not None else 0
    return out_of_space(where, written, error.cause, lost=lost, abandoned=abandoned)


async def _generate_on_ray(
    config: GenerateConfig,
    out: str,
    taxonomy: Taxonomy,
    disciplines: list[Discipline],
    endpoint: tuple[str, str | None],
    progress: ProgressMode,
) -> RunStatus:
    """The Ray engine's run: glan.db on the driver (in a local state directory when OUT is an
    object store, copied up to OUT/glan.db once the syllabi exist and at the end), Parquet
    parts in OUT."""
    if config.batch:
        raise ConfigError("--batch and --engine ray do not go together; choose one")
    if config.turns > 1:
        raise ConfigError(
            "--turns above 1 needs --engine local: the Ray engine makes single-turn pairs only"
        )
    try:
        from glan.engine.ray.driver import RayEngine
    except ImportError:
        raise ConfigError('--engine ray needs Ray: pip install "glan[ray]"') from None
    state = StateDir(out)
    store = _open_store(state.path, config)
    engine: RayEngine | None = None
    try:
        _check_turns(store, config, out)  # a run with conversations is not continued here
        stats = _begin(store, config, taxonomy)
        budget = None
        if config.max_cost is not None:
            from glan.run.ray_parts import wide_usage

            usage = store.usage() + wide_usage(state.location)
            budget = _budget(config, usage, stats.prices)
        negotiator = stored_negotiator(config.structured_output, endpoint[0], store)
        client = OpenAIClient.for_settings(
            config, *endpoint, config.limits(), negotiator=negotiator
        )
        async with client:
            engine = RayEngine(
                config,
                store,
                state,
                _capped(client, budget, stats.prices),
                endpoint,
                stats,
                display_for(progress, stats),
                budget=budget,
            )
            engine.prepare(Pipeline(config).roots(disciplines))
            await engine.run()
        store.commit()
    except StoreWriteError as error:
        narrow = engine.narrow if engine is not None else None
        raise _stopped_writing(store, state.path, error, narrow) from None
    finally:
        store.close()
        state.upload()
    assert engine is not None
    return _capped_status(status(out, prices=stats.prices), config, engine.capped)


def _begin(store: Store, config: GenerateConfig, taxonomy: Taxonomy) -> RunStats:
    """Record the invocation; the stats it starts from."""
    store.log_invocation(config.model_dump(mode="json"))
    store.set_meta(TAXONOMY_META, [d.id for d in taxonomy.disciplines()])
    return RunStats(
        prices=PriceTable.load(config.prices),
        questions_per_syllabus=config.questions_per_syllabus,
        turns=config.turns,
    )


def _check_turns(store: Store, config: GenerateConfig, where: str) -> None:
    """``--turns`` only grows on a run. Raised, the rows so far become first turns of longer
    conversations, whose rows supersede them (``Store.supersede``); lowered, it would leave
    conversations half made, so it is refused."""
    before = store.get_meta(TURNS_META) or 1
    if config.turns < before:
        raise ConfigError(
            f"{where} holds conversations of {before} turns; --turns {config.turns} cannot"
            f" shorten them: pass --turns {before} (or more) to continue it, or use a new --out"
        )
    if config.turns > before:
        if store.last_out_seq():
            store.start_superseding()
        store.set_meta(TURNS_META, config.turns)


def _budget(config: GenerateConfig, usage: Iterable[Usage], prices: PriceTable) -> Budget | None:
    """The run's spending cap, and what the run directory has spent against it already."""
    if config.max_cost is None:
        return None
    require_prices({name: config.stage(name).model or config.model for name in LABELS}, prices)
    return Budget(config.max_cost, total_spent(usage, prices), sequels(config, prices))


def _capped(client: Client, budget: Budget | None, prices: PriceTable, batch: bool = False) -> Any:
    return client if budget is None else CappedClient(client, budget, prices, batch=batch)


def _capped_status(result: RunStatus, config: GenerateConfig, capped: bool) -> RunStatus:
    result.capped = capped and not result.complete
    result.max_cost = config.max_cost
    return result


def confirmation_needed(config: GenerateConfig, out: str | Path) -> str | None:
    """Why a run of ``config`` into ``out`` should be confirmed before it starts, or None.

    A run with a cap (``max_cost``) never asks. One without asks when its plan is estimated
    above ``CONFIRM_ABOVE`` dollars, or, when a model is missing from the price table, when it
    plans more than ``CONFIRM_ABOVE_CALLS`` calls (the bundled taxonomy at the paper's settings
    is 418,320 calls, $178 at gpt-4o-mini's prices); unless this run directory already confirmed
    a plan at least as big, so a resumed run does not ask twice."""
    disciplines = _taxonomy(config).select(config.disciplines)
    return needs_confirming(config, out, disciplines, plan_cost(config, disciplines))


def plan(config: GenerateConfig) -> list[StageEstimate]:
    """What a run of ``config`` will ask for and cost, before it starts (``glan estimate``)."""
    disciplines = _taxonomy(config).select(config.disciplines)
    return estimate(config, disciplines, PriceTable.load(config.prices))


def status(run_dir: str | Path, prices: PriceTable | None = None) -> RunStatus:
    """Per-stage counts, requests, tokens and spend of a run directory, local or Ray."""
    if not is_run(run_dir):
        raise ConfigError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    run = open_run(run_dir)
    try:
        return _status(run, prices)
    finally:
        run.close()


def _status(run: Run, prices: PriceTable | None) -> RunStatus:
    counts = run.counts()
    spent = spend_by_stage(run.usage(), prices)
    stages: dict[str, StageStatus] = {}
    config = GenerateConfig()
    review = [s for s in ReviewWorkflow(config).stages.values() if s.item_kind in counts]
    for stage in [*Pipeline(config).stages.values(), *review]:
        statuses = counts.get(stage.item_kind, {})
        used = spent.get(stage.name, StageSpend())
        if stage.name in TURN_STAGES and not statuses and not used.calls:
            continue  # a single-turn run: no conversation stages to show
        stages[stage.name] = StageStatus(
            done=statuses.get("done", 0),
            pending=statuses.get("pending", 0),
            failed=statuses.get("failed", 0),
            requests=used.calls,
            tokens_in=used.tokens_in,
            tokens_out=used.tokens_out,
            cost=used.cost,
            tokens_cached=used.tokens_cached,
        )
    ordered = {name: stages[name] for name in [*LABELS, *stages] if name in stages}
    conversations = "reply" in counts  # then rows are the last turns' replies, not answers
    return RunStatus(
        run.where,
        ordered,
        rows=run.store.row_count() if conversations else ordered["answer"].done,
        errors=run.errors(),
        removed=_removed_rows(run.store),
        dataset=run.dataset,
    )


def coverage(run_dir: str | Path) -> list[SubjectCoverage]:
    """Per subject: the questions that drew on each class session and key concept."""
    if not is_run(run_dir):
        raise ConfigError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    run = open_run(run_dir)
    try:
        return subject_coverage(run)
    finally:
        run.close()


TAXONOMY_META = "taxonomy_disciplines"  # ids of the disciplines of the last run's taxonomy


def _taxonomy(config: GenerateConfig) -> Taxonomy:
    """The run's taxonomy; one with unreviewed nodes only when the config allows it."""
    prompts_for(config.prompts_dir)  # a missing directory or a broken template fails here
    taxonomy = Taxonomy.load(config.taxonomy)
    if not config.allow_unreviewed:
        taxonomy.require_reviewed(str(config.taxonomy))
    return taxonomy


def _removed_rows(store: Store) -> dict[str, int]:
    """Rows of disciplines that are not in the taxonomy of the last run, by discipline path:
    they stay in the store and in instructions.jsonl; nothing more is asked for them."""
    current = store.get_meta(TAXONOMY_META)
    if current is None:
        return {}
    keep = set(current)
    removed = {}
    for root, rows in store.rows_by_root().items():
        if root not in keep:
            node = store.get(root)
            path = " > ".join(node.data.get("path", [])) if node is not None else root
            removed[path or root] = rows
    return removed
