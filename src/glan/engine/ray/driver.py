"""The Ray engine: the narrow stages on the driver, the wide ones as a Ray Data pipeline.

Subjects and syllabi are a few thousand calls: the driver runs them with the local engine, into
glan.db. Questions and answers are millions: finished syllabi become a dataset that streams
through spec sampling (tasks), then a question pool and an answer pool of ``StageWorker`` actors,
and lands as Parquet parts in OUT/rows. Resuming reads which pairs are written (their ids and
question ids), and the stored replies of the items that are not, and starts again from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import warnings
from typing import Any

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy, DataContext

from glan.config import ConfigError, GenerateConfig, RayOptions
from glan.costs.budget import Budget
from glan.costs.progress import RunStats
from glan.engine.local import Display, Limits, LocalEngine
from glan.engine.ray.connect import check_reachable, start_ray
from glan.engine.ray.workers import Meter, StageWorker, dump_node, expand_specs
from glan.engine.teacher import Client
from glan.items import NewItem
from glan.llm.errors import FatalLLMError
from glan.llm.types import ChatResponse
from glan.prompts import prompts_for
from glan.run import ENGINE_META
from glan.run.parts import ROWS, RunFilesError, StateDir
from glan.run.ray_parts import failures, finished_keys, stored_replies
from glan.run.store import Store
from glan.stages.pipeline import Pipeline

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between progress updates from the meter
# Ray Data runs a few batches of a task at once and hands them on in order: batches of several
# times a worker's concurrency keep its connections full while a slow item holds one back.
BATCH_PER_WORKER = 8
# A task hands its output on a block at a time: small blocks let answers start while questions of
# the same syllabi are still being asked, instead of after all of them.
BLOCK_BYTES = 1 << 20
ROWS_PER_FILE = 10_000  # pairs per Parquet part; their replies are in calls/ meanwhile
TASK_CPUS = 0.25  # sampling specs and writing parts are light; the workers hold the rest


class RayEngine:
    def __init__(
        self,
        config: GenerateConfig,
        store: Store,
        state: StateDir,
        client: Client,
        endpoint: tuple[str, str | None],
        stats: RunStats,
        display: Display,
        budget: Budget | None = None,
    ) -> None:
        """``budget``: the run's spending cap; ``client`` reserves against it (``CappedClient``)
        on the driver, and the workers against the meter's copy of it."""
        self.config = config
        self.store = store
        self.state = state
        self.location = state.location
        self.endpoint = endpoint
        self.stats = stats
        self.display = display
        pipeline = Pipeline(config)
        self.narrow = LocalEngine(
            pipeline,
            Limits.of(config),
            prompts_for(config.prompts_dir),
            store,
            client,
            None,
            stats,
            _Refreshing(display),
            kinds=pipeline.upstream,
            budget=budget,
        )
        self.budget = budget
        self.roots: set[str] = set()
        self.wide_capped = False

    def prepare(self, roots: list[NewItem]) -> None:
        self.store.set_meta(ENGINE_META, "ray")
        self.roots = {node.id for node in roots if node.kind == "discipline"}
        self.narrow.prepare(roots)

    @property
    def capped(self) -> bool:
        """The run stopped at its spending cap: a request was refused, here or on a worker."""
        return self.narrow.capped or self.wide_capped

    async def run(self) -> None:
        check_reachable(self.config.ray.address)  # before the narrow stages spend anything
        self.display.start()
        try:
            await self.narrow.run()
            # The syllabi every question is drawn from reach OUT before any question is asked:
            # resumed elsewhere after a crash, the run draws from the same ones.
            self.store.checkpoint()
            self.state.upload()
            if not self.narrow.capped:
                await self._wide()
        finally:
            self.display.stop()

    async def _wide(self) -> None:
        subjects = [
            {"node": dump_node(node)}
            for node in self.store.nodes("subject", "done")
            if node.root in self.roots
        ]
        done = finished_keys(self.location)
        failed = failures(self.location, done)
        attempts = {item.id: item.attempts for item in failed.values()}
        stored = stored_replies(self.location, done)
        written = len(done) // 2  # each written pair adds its own key and its question's
        total = len(subjects) * self.config.questions_per_syllabus
        for name in ("question", "answer"):
            self.stats.stages[name].total = total
        if not subjects:
            return
        _start_ray(self.config.ray)
        # the meter gets the budget as the narrow stages left it: its cap, spend and sequels
        meter = ray.remote(Meter).remote(self.config.limits(), self.stats.prices, self.budget)
        dataset = self._dataset(subjects, done, attempts, stored, meter)
        before = dict.fromkeys(("question", "answer"), written)
        poller = asyncio.create_task(self._poll(meter, before))
        try:
            await _in_daemon_thread(self._write, dataset)
        except asyncio.CancelledError:
            # Ctrl-C: ending this driver's Ray session stops the job's actors and tasks, which
            # also ends the thread that waits on them.
            ray.shutdown()
            raise
        except Exception as error:
            reason = None
            with contextlib.suppress(Exception):
                reason = await meter.stop_reason.remote()
            raise _user_error(error, reason) from None
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            with contextlib.suppress(Exception):
                self._update(await meter.snapshot.remote(), before)
            with contextlib.suppress(Exception):
                self.wide_capped = await meter.capped.remote()

    def _dataset(
        self,
        subjects: list[dict[str, str]],
        done: np.ndarray,
        attempts: dict[str, int],
        stored: dict[str, ChatResponse],
        meter: Any,
    ) -> Any:
        options = self.config.ray
        # --concurrency is what is in flight in all, as with the local engine: two pools share it.
        per_worker = max(1, math.ceil(self.config.concurrency / (2 * options.workers)))
        # A block is one task of a pool: enough of them for every worker to have several, few
        # enough (8 syllabi, some 80 questions, each) that tasks cost nothing next to the calls.
        blocks = min(len(subjects), max(4 * options.workers, len(subjects) // 8))
        dataset = ray.data.from_items(subjects, override_num_blocks=blocks).map_batches(
            expand_specs,
            batch_format="pyarrow",
            num_cpus=TASK_CPUS,
            # Ray Data fuses tasks into the actor pool after them (one task per syllabus block;
            # measured: half the rate) unless the task pool's size differs from the actor
            # pool's: twice as many sampling tasks at once keeps them apart, so the questions
            # come in small blocks spread over every worker.
            concurrency=2 * options.workers,
            fn_kwargs={"config": self.config, "done": done},
        )
        for stage in ("question", "answer"):
            dataset = dataset.map_batches(
                StageWorker,
                batch_format="pyarrow",
                batch_size=BATCH_PER_WORKER * per_worker,
                compute=ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=4),
                num_cpus=options.worker_cpus,
                fn_constructor_kwargs={
                    "stage": stage,
                    "config": self.config,
                    "base_url": self.endpoint[0],
                    "api_key": self.endpoint[1],
                    "run": self.location.uri,
                    "stored": stored,
                    "attempts": attempts,
                    "meter": meter,
                    "concurrency": per_worker,
                    "prices": self.stats.prices,
                },
            )
        return dataset

    def _write(self, dataset: Any) -> None:
        self.location.fs.create_dir(self.location.path(ROWS), recursive=True)
        dataset.write_parquet(
            self.location.path(ROWS),
            filesystem=self.location.fs,
            min_rows_per_file=ROWS_PER_FILE,
            compression="zstd",
            ray_remote_args={"num_cpus": TASK_CPUS},
        )

    async def _poll(self, meter: Any, before: dict[str, int]) -> None:
        while True:
            await asyncio.sleep(POLL)
            with contextlib.suppress(Exception):  # a slow meter must not stop the run
                self._update(await meter.snapshot.remote(), before)
            self.display.refresh()

    def _update(self, snapshot: dict[str, Any], before: dict[str, int]) -> None:
        for name, counted in snapshot.items():
            stats = self.stats.stages[name]
            if name in before:
                stats.done = before[name] + counted.done
                stats.failed = counted.failed
            stats.requests = counted.requests
            stats.tokens_in, stats.tokens_out = counted.tokens_in, counted.tokens_out
            stats.tokens_cached = counted.tokens_cached
            stats.cost = counted.cost


async def _in_daemon_thread(function: Any, *args: Any) -> None:
    """``asyncio.to_thread``, in a thread the interpreter does not wait for at exit: after
    Ctrl-C, Ray's executor can take many seconds to notice its session is gone."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not finished.done():
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

    def run() -> None:
        error = None
        try:
            function(*args)
        except BaseException as raised:
            error = raised
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="glan-ray-job", daemon=True).start()
    await finished


class _Refreshing:
    """The display as the narrow phase sees it: the Ray engine starts and stops it."""

    def __init__(self, display: Display) -> None:
        self.display = display

    def start(self) -> None:
        pass

    def refresh(self) -> None:
        self.display.refresh()

    def stop(self) -> None:
        pass


def _start_ray(options: RayOptions) -> None:
    start_ray(options.address)
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    _check_room(options)
    DataContext.get_current().target_max_block_size = BLOCK_BYTES


def _check_room(options: RayOptions) -> None:
    """Both pools must fit with room for a task: else Ray waits forever for a free CPU."""
    needed = 2 * options.workers * options.worker_cpus + TASK_CPUS
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if needed <= cpus:
        return
    message = (
        f"{2 * options.workers} workers at {options.worker_cpus} CPU each, and a task, need"
        f" {needed:g} CPUs; the Ray cluster has {cpus:g}: lower --ray-workers or ray.worker_cpus"
    )
    if options.address is None:  # Ray on this machine: it will not grow
        raise ConfigError(message)
    log.warning("%s (unless the cluster scales up)", message)


def _user_error(error: BaseException, reason: tuple[str, str] | None) -> BaseException:
    """What stopped the job, as the user should see it: the error a worker reported to the meter
    when it is one a user can fix (Ray does not carry a worker's exception over intact)."""
    if reason is not None:
        kind, message = reason
        for known in (FatalLLMError, RunFilesError):
            if known.__name__ == kind:
                return known(message)
    return error
