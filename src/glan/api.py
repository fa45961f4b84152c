"""The Python API: what the CLI does, callable from a script or a notebook."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from glan.config import ConfigError, GenerateConfig, resolve_endpoint
from glan.costs.estimate import WIDE_STAGES, StageEstimate, estimate
from glan.costs.prices import PriceTable, StageSpend, spend_by_stage
from glan.costs.progress import LABELS, LiveProgress, LogProgress, NoProgress, RunStats
from glan.engine.local import Limits, LocalEngine
from glan.llm.batch.client import BatchClient
from glan.llm.client import OpenAIClient
from glan.llm.negotiation import stored_negotiator
from glan.prompts import prompts_for
from glan.run import Run, is_run, open_run
from glan.run.batches import SqliteBatchRecords
from glan.run.jsonl import OUTPUT_NAME, JsonlOutput
from glan.run.lock import run_lock
from glan.run.parts import StateDir
from glan.run.store import DB_NAME, Store
from glan.stages.pipeline import Pipeline
from glan.taxonomy import Discipline, Taxonomy

ProgressMode = Literal["auto", "live", "log", "none"]


@dataclass
class StageStatus:
    done: int
    pending: int
    failed: int
    requests: int
    tokens_in: int
    tokens_out: int
    cost: float


@dataclass
class RunStatus:
    run_dir: str
    stages: dict[str, StageStatus]
    rows: int
    errors: list[tuple[str, str, str]]
    # rows of disciplines no longer in the taxonomy (removed or renamed), by discipline path
    removed: dict[str, int] = field(default_factory=dict)
    dataset: str = ""  # where the pairs are: instructions.jsonl, or a Ray run's rows/

    @property
    def complete(self) -> bool:
        return all(s.pending == 0 and s.failed == 0 for s in self.stages.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.stages.values())

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.stages.values())


def generate(
    config: GenerateConfig, out: str | Path, *, progress: ProgressMode = "auto"
) -> RunStatus:
    """Run (or continue) the pipeline into ``out``; returns the run's status when it stops.

    In a notebook, where an event loop is already running, use ``await agenerate(...)``.
    """
    return asyncio.run(agenerate(config, out, progress=progress))


async def agenerate(
    config: GenerateConfig, out: str | Path, *, progress: ProgressMode = "none"
) -> RunStatus:
    base_url, api_key = resolve_endpoint(config.base_url, config.api_key)
    taxonomy = _taxonomy(config)
    disciplines = taxonomy.select(config.disciplines)
    with run_lock(StateDir(str(out)).path, "generate"):  # one writer per run directory
        if config.engine == "ray":
            return await _generate_on_ray(
                config, str(out), taxonomy, disciplines, (base_url, api_key), progress
            )
        return await _generate_locally(
            config, Path(out), taxonomy, disciplines, (base_url, api_key), progress
        )


async def _generate_locally(
    config: GenerateConfig,
    run_dir: Path,
    taxonomy: Taxonomy,
    disciplines: list[Discipline],
    endpoint: tuple[str, str | None],
    progress: ProgressMode,
) -> RunStatus:
    base_url, api_key = endpoint
    store = Store.open(run_dir)
    try:
        stats = _begin(store, config, taxonomy)
        output = JsonlOutput(run_dir / OUTPUT_NAME)
        output.open(store)
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
            engine = LocalEngine(
                pipeline,
                Limits.of(config),
                prompts_for(config.prompts_dir),
                store,
                client,
                output,
                stats,
                _display(progress, stats),
                batch_clients=dict.fromkeys(WIDE_STAGES, batch) if batch else None,
            )
            engine.prepare(pipeline.roots(disciplines))
            try:
                await engine.run()
            finally:
                output.close()
    finally:
        store.close()
    return status(run_dir, stats.prices)


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
    try:
        from glan.engine.ray.driver import RayEngine
    except ImportError:
        raise ConfigError('--engine ray needs Ray: pip install "glan[ray]"') from None
    state = StateDir(out)
    store = Store.open(state.path)
    try:
        stats = _begin(store, config, taxonomy)
        negotiator = stored_negotiator(config.structured_output, endpoint[0], store)
        client = OpenAIClient.for_settings(
            config, *endpoint, config.limits(), negotiator=negotiator
        )
        async with client:
            engine = RayEngine(
                config, store, state, client, endpoint, stats, _display(progress, stats)
            )
            engine.prepare(Pipeline(config).roots(disciplines))
            await engine.run()
    finally:
        store.close()
        state.upload()
    return status(out, prices=stats.prices)


def _begin(store: Store, config: GenerateConfig, taxonomy: Taxonomy) -> RunStats:
    """Record the invocation; the stats it starts from."""
    store.log_invocation(config.model_dump(mode="json"))
    store.set_meta(TAXONOMY_META, [d.id for d in taxonomy.disciplines()])
    return RunStats(
        prices=PriceTable.load(config.prices),
        questions_per_syllabus=config.questions_per_syllabus,
    )


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
    for stage in Pipeline(GenerateConfig()).stages.values():
        statuses = counts.get(stage.item_kind, {})
        used = spent.get(stage.name, StageSpend())
        stages[stage.name] = StageStatus(
            done=statuses.get("done", 0),
            pending=statuses.get("pending", 0),
            failed=statuses.get("failed", 0),
            requests=used.calls,
            tokens_in=used.tokens_in,
            tokens_out=used.tokens_out,
            cost=used.cost,
        )
    ordered = {name: stages[name] for name in LABELS}
    return RunStatus(
        run.where,
        ordered,
        rows=ordered["answer"].done,
        errors=run.errors(),
        removed=_removed_rows(run.store),
        dataset=run.dataset,
    )


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


def _display(mode: ProgressMode, stats: RunStats) -> LiveProgress | LogProgress | NoProgress:
    if mode == "auto":
        mode = "live" if sys.stderr.isatty() else "log"
    if mode == "live":
        return LiveProgress(stats)
    if mode == "log":
        return LogProgress(stats)
    return NoProgress()
