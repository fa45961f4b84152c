"""``glan eval``: GLAN-Test. Two candidate models answer a run's held-out questions, and a judge
scores both answers 1-10 in both orders, as the paper did; results per discipline, field and
overall, with the order effect visible.

The held-out questions are the test split ``glan export --test-per-discipline N --seed S`` writes
(the same choice, so a model trained on that export never saw them). Everything runs on the
engine into the run's glan.db: stored, resumable after a kill, rate-limited, priced before it
starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glan.config import ConfigError, GenerateConfig, resolve_endpoint
from glan.costs.prices import PriceTable
from glan.costs.progress import ProgressMode, RunStats, StageStats, display_for
from glan.engine.local import Limits, LocalEngine
from glan.llm.batch.client import BatchClient
from glan.llm.client import OpenAIClient
from glan.loop.eval_stages import Candidate, EvalWorkflow, PairwiseJudgeStage
from glan.prompts import prompts_for
from glan.publish.export import choose_test
from glan.run import Run, is_run, open_run
from glan.run.batches import SqliteBatchRecords
from glan.run.curation import CuratedRows
from glan.run.lock import run_lock
from glan.run.parts import StateDir
from glan.run.store import DB_NAME

RESULTS_DIR = "eval"  # RUN/eval/NAME.json
META = "eval:"  # glan.db meta key prefix: what each evaluation compared, for the report


@dataclass(frozen=True)
class Side:
    """A candidate: an OpenAI-compatible endpoint and the model it serves."""

    base_url: str
    model: str = "default"
    api_key: str | None = None


@dataclass
class Tally:
    questions: int = 0
    a: float = 0.0  # sum of side A's mean score per question
    b: float = 0.0
    wins: int = 0  # A above B
    ties: int = 0
    losses: int = 0
    first: float = 0.0  # sum of the scores given to whichever answer was shown first
    second: float = 0.0

    def add(self, a: float, b: float, first: float, second: float) -> None:
        self.questions += 1
        self.a, self.b = self.a + a, self.b + b
        self.wins += a > b
        self.ties += a == b
        self.losses += a < b
        self.first, self.second = self.first + first, self.second + second

    def summary(self) -> dict[str, Any]:
        n = self.questions or 1
        return {
            "questions": self.questions,
            "mean_a": round(self.a / n, 3),
            "mean_b": round(self.b / n, 3),
            "wins_a": self.wins,
            "ties": self.ties,
            "wins_b": self.losses,
            # > 0: the judge favours the answer it reads first
            "order_effect": round((self.first - self.second) / (2 * n), 3),
        }


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation will ask: per held-out question, an answer from each candidate and two
    judgements (tokens by the estimate's typical sizes; stored replies are not asked again)."""

    questions: int
    calls: int
    cost: float | None  # USD at list prices; None when a model is not in the price table

    @classmethod
    def of(
        cls, questions: int, sides: tuple[Side, Side], judge: str, prices: PriceTable
    ) -> EvalPlan:
        answer_in, answer_out = 150, 600  # a question in, an answer out (Assumptions)
        judge_in, judge_out = 150 + 2 * answer_out + 250, 150
        costs = [prices.cost(s.model, answer_in * questions, answer_out * questions) for s in sides]
        costs.append(prices.cost(judge, 2 * judge_in * questions, 2 * judge_out * questions))
        cost = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
        return cls(questions, 4 * questions, cost)


@dataclass
class EvalResult:
    name: str
    a: Side
    b: Side
    judge: str
    overall: dict[str, Any]
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    disciplines: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: int = 0  # questions not judged in both orders yet
    failed: int = 0
    requests: int = 0
    cost: float = 0.0
    saved_to: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("a", "b"):
            data[side].pop("api_key", None)
        return data


def evaluate(
    run_dir: str | Path, a: Side, b: Side, config: GenerateConfig, **options: Any
) -> EvalResult:
    """GLAN-Test of candidates ``a`` and ``b`` on ``run_dir``'s held-out questions; ``config``
    gives the judge (judge_model, judge_base_url, judge_api_key), limits and prices; the options
    are ``aevaluate``'s. In a notebook, where an event loop runs, ``await aevaluate(...)``."""
    return asyncio.run(aevaluate(run_dir, a, b, config, **options))


async def aevaluate(
    run_dir: str | Path,
    a: Side,
    b: Side,
    config: GenerateConfig,
    *,
    per_discipline: int = 50,
    seed: int = 0,
    name: str | None = None,
    progress: ProgressMode = "none",
    plan: Callable[[EvalPlan], None] | None = None,
) -> EvalResult:
    """``per_discipline`` and ``seed`` choose the held-out split as glan export does; ``name``
    tells this comparison from others; ``plan`` hears what it will ask before it asks."""
    if not is_run(run_dir):
        raise ConfigError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    if per_discipline < 1:
        raise ConfigError("--per-discipline must be at least 1")
    name = name or f"{a.model} vs {b.model}"
    judge_model = config.stage("judge").model or config.model
    with run_lock(StateDir(str(run_dir)).path, "eval"):
        run = open_run(run_dir, write=True)
        try:
            workflow = _workflow(name, a, b, config, judge_model, seed)
            questions = _plant(run, workflow, per_discipline, seed)
            what = {"name": name, "a": _public(a), "b": _public(b), "judge": judge_model}
            run.store.set_meta(META + workflow.root, what)
            if not questions:
                raise ConfigError(f"{run_dir} has no pairs to hold out")
            prices = PriceTable.load(config.prices)
            if plan is not None:
                plan(EvalPlan.of(questions, (a, b), judge_model, prices))
            stats = RunStats(
                prices=prices,
                stages={stage.name: StageStats() for stage in workflow.stages.values()},
            )
            await _run(run, workflow, config, (a, b), stats, progress)
            result = results(run, workflow.root, name, a, b, judge_model)
        finally:
            run.close()
    result.requests, result.cost = stats.requests, stats.cost
    return _saved(run_dir, result)


def _workflow(
    name: str, a: Side, b: Side, config: GenerateConfig, judge_model: str, seed: int
) -> EvalWorkflow:
    settings = config.stage("answer")
    tokens = settings.max_tokens or 2048
    judge = PairwiseJudgeStage(judge_model, 1024, prompts_for(config.prompts_dir))
    return EvalWorkflow(
        name,
        Candidate("a", a.model, 0.0, tokens),
        Candidate("b", b.model, 0.0, tokens),
        judge,
        seed,
    )


def _plant(run: Run, workflow: EvalWorkflow, per_discipline: int, seed: int) -> int:
    """The held-out questions' items: the export's test split, the same choice."""
    rows = CuratedRows(run)
    test_ids, _, _ = choose_test(rows, per_discipline, seed)
    held_out = (row for row in rows if row["id"] in test_ids)
    items = workflow.plant(held_out)
    while chunk := list(itertools.islice(items, 2000)):
        run.store.add_nodes(chunk)
    # judgements whose answers were all in when a run was stopped
    for question in run.store.nodes("eval_question"):
        if question.root == workflow.root and not run.store.children(question.id, "eval_judgement"):
            answers = run.store.children(question.id)
            if len(answers) == 2 and all(s.status == "done" for s in answers):
                run.store.add_nodes(workflow.merge(question, answers))
    run.store.commit()
    return len(test_ids)


async def _run(
    run: Run,
    workflow: EvalWorkflow,
    config: GenerateConfig,
    sides: tuple[Side, Side],
    stats: RunStats,
    progress: ProgressMode,
) -> None:
    judge = resolve_endpoint(
        config.judge_base_url or config.base_url, config.judge_api_key or config.api_key
    )
    limits = config.limits()
    clients = {
        f"candidate_{side}": OpenAIClient.for_settings(config, s.base_url, s.api_key, limits)
        for side, s in zip("ab", sides, strict=True)
    }
    judge_client = OpenAIClient.for_settings(config, *judge, limits)
    batch = None
    if config.batch:  # the judge's calls only: candidates are usually servers of one's own
        batch = BatchClient.for_config(config, *judge, SqliteBatchRecords(run.store))
    async with contextlib.AsyncExitStack() as stack:
        for client in (*clients.values(), judge_client, batch):
            if client is not None:
                await stack.enter_async_context(client)
        engine = LocalEngine(
            workflow,
            Limits.of(config),
            workflow.judge.prompts,
            run.store,
            judge_client,
            None,
            stats,
            display_for(progress, stats),
            batch_clients={"eval_judge": batch} if batch else None,
            stage_clients=clients,
        )
        engine.prepare([], active={workflow.root})
        await engine.run()


def results(run: Run, root: str, name: str, a: Side, b: Side, judge: str) -> EvalResult:
    """The scores of every question judged in both orders: per discipline, field and overall."""
    overall = Tally()
    fields: dict[str, Tally] = defaultdict(Tally)
    disciplines: dict[str, Tally] = defaultdict(Tally)
    pending = failed = 0
    for question in run.store.nodes("eval_question"):
        if question.root != root:
            continue
        judged = {j.data["order"]: j for j in run.store.children(question.id, "eval_judgement")}
        failed += sum(j.status == "failed" for j in judged.values())
        if len(judged) < 2 or any(j.status != "done" for j in judged.values()):
            pending += 1
            continue
        ab, ba = judged["ab"].result, judged["ba"].result
        scores = (
            (ab["score_1"] + ba["score_2"]) / 2,
            (ab["score_2"] + ba["score_1"]) / 2,
            ab["score_1"] + ba["score_1"],
            ab["score_2"] + ba["score_2"],
        )
        for tally in (
            overall,
            fields[str(question.data.get("field"))],
            disciplines[str(question.data.get("discipline"))],
        ):
            tally.add(*scores)
    return EvalResult(
        name=name,
        a=a,
        b=b,
        judge=judge,
        overall=overall.summary(),
        fields={k: v.summary() for k, v in sorted(fields.items())},
        disciplines={k: v.summary() for k, v in sorted(disciplines.items())},
        pending=pending,
        failed=failed,
    )


def _public(side: Side) -> dict[str, Any]:
    return {"base_url": side.base_url, "model": side.model}


def every_result(run: Run) -> list[EvalResult]:
    """The results of every evaluation of a run (the report's GLAN-Test section)."""
    return [
        results(
            run, key[len(META) :], what["name"], Side(**what["a"]), Side(**what["b"]), what["judge"]
        )
        for key, what in run.store.meta_like(META).items()
    ]


def _saved(run_dir: str | Path, result: EvalResult) -> EvalResult:
    """RUN/eval/NAME.json, for a local run directory (the report reads the store)."""
    if "://" in str(run_dir):
        return result
    directory = Path(run_dir) / RESULTS_DIR
    with contextlib.suppress(OSError):
        directory.mkdir(exist_ok=True)
        path = directory / (_slug(result.name) + ".json")
        path.write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
        result.saved_to = str(path)
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "eval"
