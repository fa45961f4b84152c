"""``glan judge``: a run's pairs judged and verified on the engine (see stages/review.py).

Works on any run directory, local or Ray, through the run interface: the rows are read with
``open_run``, the review items and their replies go into the run's glan.db like any stage's, so
judging is stored, resumable after a kill, rate-limited, priced and batchable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path

from glan.config import ConfigError, GenerateConfig, resolve_endpoint
from glan.costs.prices import PriceTable
from glan.costs.progress import ProgressMode, RunStats, StageStats, display_for
from glan.engine.local import Limits, LocalEngine
from glan.llm.batch.client import BatchClient
from glan.llm.client import OpenAIClient
from glan.prompts import prompts_for
from glan.run import Run, is_run, open_run
from glan.run.batches import SqliteBatchRecords
from glan.run.lock import run_lock
from glan.run.parts import StateDir
from glan.run.store import DB_NAME
from glan.stages.review import ROOT, ReviewWorkflow, reviews

_PLANT = 2000  # review items inserted per transaction


@dataclass
class ReviewSummary:
    rows: int  # rows of the run
    judged: int  # rows with a judgement
    verified: int  # rows whose samples are all in
    failed: int  # review items that failed (the next run tries them again)
    mean_score: float | None
    low: int  # judged below 5 overall
    contradicted: int  # a majority of samples give another final answer
    no_single_answer: int  # questions with no single final answer: agreement not scored
    requests: int
    cost: float


def judge(
    run_dir: str | Path, config: GenerateConfig, *, progress: ProgressMode = "none"
) -> ReviewSummary:
    """Judge (``config.judge``) and verify (``config.verify`` more answers) every pair of a run.

    In a notebook, where an event loop is already running, use ``await ajudge(...)``."""
    return asyncio.run(ajudge(run_dir, config, progress=progress))


async def ajudge(
    run_dir: str | Path, config: GenerateConfig, *, progress: ProgressMode = "none"
) -> ReviewSummary:
    if not is_run(run_dir):
        raise ConfigError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    with run_lock(StateDir(str(run_dir)).path, "judge"):
        return await review(run_dir, config, progress=progress)


async def review(
    run_dir: str | Path, config: GenerateConfig, *, progress: ProgressMode = "none"
) -> ReviewSummary:
    """``ajudge`` for a caller that holds the run's lock (``glan generate --judge``)."""
    if not (config.judge or config.verify):
        raise ConfigError("nothing to review: ask for --judge, --verify N or both")
    workflow = ReviewWorkflow(config)
    stats = RunStats(
        prices=PriceTable.load(config.prices),
        stages={
            stage.name: StageStats()
            for stage, wanted in ((workflow.judge, config.judge), (workflow.verify, config.verify))
            if wanted
        },
    )
    run = open_run(run_dir, write=True)
    try:
        rows = _plant(run, workflow)
        teacher = resolve_endpoint(config.base_url, config.api_key)
        judge_endpoint = resolve_endpoint(
            config.judge_base_url or config.base_url, config.judge_api_key or config.api_key
        )
        client = OpenAIClient.for_settings(config, *teacher, config.limits())
        judge_client = (
            OpenAIClient.for_settings(config, *judge_endpoint, config.limits())
            if judge_endpoint != teacher
            else None
        )
        batch = None
        if config.batch:
            batch = BatchClient.for_config(config, *teacher, SqliteBatchRecords(run.store))
        async with (
            client,
            judge_client or contextlib.nullcontext(),
            batch or contextlib.nullcontext(),
        ):
            engine = LocalEngine(
                workflow,
                Limits.of(config),
                prompts_for(config.prompts_dir),
                run.store,
                client,
                None,
                stats,
                display_for(progress, stats),
                # a judge at its own endpoint stays online: the batch API is the teacher's
                batch_clients={
                    name: batch for name in stats.stages if not (judge_client and name == "judge")
                }
                if batch
                else None,
                stage_clients={"judge": judge_client} if judge_client else None,
            )
            engine.prepare([], active={ROOT})
            await engine.run()
        return _summary(run, rows, stats)
    finally:
        run.close()


def _plant(run: Run, workflow: ReviewWorkflow) -> int:
    """Insert the review items of every row (those already there stay as they are)."""
    rows = 0

    def counted() -> object:
        nonlocal rows
        for _, row in run.rows():
            rows += 1
            yield row

    items = workflow.plant(counted())  # type: ignore[arg-type]
    while chunk := list(itertools.islice(items, _PLANT)):
        run.store.add_nodes(chunk)
        run.store.commit()
    return rows


def _summary(run: Run, rows: int, stats: RunStats) -> ReviewSummary:
    found = reviews(run.store)
    scores = [r.score for r in found.values() if r.score is not None]
    agreements = [r.agreement for r in found.values() if r.agreement is not None]
    counts = run.store.counts()
    failed = sum(counts.get(kind, {}).get("failed", 0) for kind in ("judgement", "verify_sample"))
    return ReviewSummary(
        rows=rows,
        judged=len(scores),
        verified=len(agreements),
        failed=failed,
        mean_score=statistics.fmean(scores) if scores else None,
        low=sum(1 for s in scores if s < 5),
        contradicted=sum(1 for a in agreements if a.contradicted),
        no_single_answer=sum(1 for a in agreements if not a.single),
        requests=stats.requests,
        cost=stats.cost,
    )
