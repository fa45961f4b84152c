"""The local engine: one asyncio process, every stage streaming at once under one concurrency limit.

The store is the queue: pending items are read from SQLite in small batches, deepest stage first,
so memory does not grow with the size of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any, Protocol

from glan.config import GenerateConfig
from glan.engine.teacher import Client, StoredTeacher
from glan.llm.errors import FatalLLMError, LLMError
from glan.output import JsonlOutput
from glan.pipeline import KINDS, Pipeline
from glan.progress import RunStats
from glan.stages import Stage
from glan.store import NewNode, Node, Store

log = logging.getLogger(__name__)

COMMIT_EVERY = 0.02  # seconds: group commit; a reply waits at most this long before it is used
BATCH = 256  # pending items read from the store at a time, per kind
UPSTREAM = ("subject", "subject_query")


class Display(Protocol):
    def start(self) -> None: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...


class LocalEngine:
    def __init__(
        self,
        config: GenerateConfig,
        store: Store,
        client: Client,
        output: JsonlOutput,
        stats: RunStats,
        display: Display,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.output = output
        self.stats = stats
        self.display = display
        self.pipeline = Pipeline(config)
        self._queues: dict[str, deque[Node]] = {kind: deque() for kind in KINDS}
        self._cursor: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._drained: dict[str, bool] = dict.fromkeys(KINDS, False)
        self._running: dict[asyncio.Task[None], str] = {}
        self._parents: OrderedDict[str, Node] = OrderedDict()
        # Upstream stages keep a share of the slots, so syllabi keep coming while questions flow.
        self._reserved = max(1, config.concurrency // 8)

    # -- setup --------------------------------------------------------------------------------

    def prepare(self, roots: list[NewNode]) -> None:
        """Plant the roots, re-queue failed items, re-grow finished nodes if the shape changed."""
        self.store.set_roots(node.id for node in roots if node.kind == "discipline")
        self.store.retry_failed()
        self.store.add_nodes(roots)
        signature = self.pipeline.expansion_signature()
        if self.store.get_meta("expansion") != signature:
            self._reexpand()
            self.store.set_meta("expansion", signature)
        self.store.commit()
        for kind, statuses in self.store.counts().items():
            name = self._stage_name(kind)
            if name is not None:
                stats = self.stats.stages[name]
                stats.total = sum(statuses.values())
                stats.done = statuses.get("done", 0)

    def _reexpand(self) -> None:
        for kind in ("discipline", "subject"):
            for node in self.store.nodes(kind, "done"):
                self.store.add_nodes(self.pipeline.children(node))
        for discipline in self.store.nodes("discipline", "done"):
            self._merge_if_complete(discipline.id)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        committer = asyncio.create_task(self._commit_loop())
        self.display.start()
        try:
            await self._schedule()
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            self.store.commit()
            self.output.flush()
            self.display.stop()

    async def _schedule(self) -> None:
        while True:
            while len(self._running) < self.config.concurrency:
                picked = self._next()
                if picked is None:
                    break
                stage, node = picked
                task = asyncio.create_task(self._work(stage, node))
                self._running[task] = stage.kind
            if not self._running:
                return
            finished, _ = await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                del self._running[task]
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    def _next(self) -> tuple[Stage, Node] | None:
        upstream_running = sum(1 for kind in self._running.values() if kind in UPSTREAM)
        order = KINDS
        if upstream_running < self._reserved:
            order = UPSTREAM + tuple(k for k in KINDS if k not in UPSTREAM)
        for kind in order:
            node = self._pop(kind)
            if node is not None:
                return self.pipeline.stages[kind], node
        return None

    def _pop(self, kind: str) -> Node | None:
        queue = self._queues[kind]
        if not queue and not self._drained[kind]:
            batch = self.store.pending(kind, self._cursor[kind], BATCH)
            if batch:
                self._cursor[kind] = batch[-1][0]
                queue.extend(node for _, node in batch)
            if len(batch) < BATCH:
                self._drained[kind] = True
        return queue.popleft() if queue else None

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_EVERY)
            if self.store.dirty:
                self.store.commit()
                self.output.flush()
            self.display.refresh()

    # -- one item -----------------------------------------------------------------------------

    async def _work(self, stage: Stage, node: Node) -> None:
        stats = self.stats.stages[stage.name]
        teacher = StoredTeacher(
            self.store, self.client, self.stats, node, stage.name, self.config.repair_attempts
        )
        try:
            result = await stage.run(node, self._parent(node), teacher)
        except FatalLLMError:
            raise
        except LLMError as error:
            self._fail(node, stats, str(error))
            return
        except Exception as error:  # a bug in a stage must not take the whole run down
            log.exception("stage %s failed on %s", stage.name, node.id)
            self._fail(node, stats, f"internal error: {error.__class__.__name__}: {error}")
            return
        self.store.finish(node, result, output=stage.output)
        self._add(self.pipeline.children(replace(node, status="done", result=result)))
        if stage.kind == "subject_query" and node.parent_id is not None:
            self._merge_if_complete(node.parent_id)
        if stage.output:
            self.store.after_commit(lambda: self.output.write(result))
        stats.done += 1
        await self.store.durable()

    def _fail(self, node: Node, stats: Any, error: str) -> None:
        self.store.fail(node, error)
        stats.failed += 1

    def _merge_if_complete(self, discipline_id: str) -> None:
        queries = self.store.children(discipline_id, kind="subject_query")
        if queries and all(q.status == "done" for q in queries):
            discipline = self.store.get(discipline_id)
            assert discipline is not None
            self._add(self.pipeline.subjects.merge(discipline, queries))

    def _add(self, nodes: list[NewNode]) -> None:
        for kind in dict.fromkeys(n.kind for n in nodes):
            added = self.store.add_nodes(n for n in nodes if n.kind == kind)
            name = self._stage_name(kind)
            if added and name is not None:
                self._drained[kind] = False
                self.stats.stages[name].total += added

    def _parent(self, node: Node) -> Node:
        assert node.parent_id is not None
        parent = self._parents.get(node.parent_id)
        if parent is None:
            parent = self.store.get(node.parent_id)
            assert parent is not None, f"item {node.id} has no parent {node.parent_id}"
            self._parents[node.parent_id] = parent
            if len(self._parents) > 4096:
                self._parents.popitem(last=False)
        else:
            self._parents.move_to_end(node.parent_id)
        return parent

    def _stage_name(self, kind: str) -> str | None:
        stage = self.pipeline.stages.get(kind)
        return stage.name if stage else None
