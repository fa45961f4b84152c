"""The local engine: one asyncio process, every stage streaming at once under one concurrency limit.

The store is the queue: pending items are read from SQLite in small batches, deepest stage first,
so memory does not grow with the size of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from glan.costs.budget import Budget, CapReached
from glan.costs.progress import RunStats
from glan.engine.attempt import attempt
from glan.engine.teacher import Client, StoredTeacher
from glan.items import Item, NewItem
from glan.llm.batch.client import ORIGIN
from glan.prompts import Prompts
from glan.run.jsonl import JsonlOutput, OutputWriteError
from glan.run.store import RESCUED_META, Store, StoreError
from glan.stages import Stage
from glan.stages.base import Workflow

TICK = 0.1  # seconds between commits of bookkeeping nobody waits for, output flushes, redraws
# After a failed write (a full disk), how long requests in flight may take to come back: their
# replies are paid for, and kept for Store.rescue; the ones still out then are abandoned.
DRAIN = 30.0
BATCH = 256  # pending items read from the store at a time, per kind


@dataclass(frozen=True)
class Limits:
    concurrency: int  # requests in flight
    repair_attempts: int  # repair turns for JSON that will not validate
    batch_max_requests: int = 0  # requests per provider batch, for stages on a batch API

    @classmethod
    def of(cls, config: Any) -> Limits:
        """The limits a run's or a build's config sets."""
        return cls(
            config.concurrency, config.repair_attempts, getattr(config, "batch_max_requests", 0)
        )


class Display(Protocol):
    def start(self) -> None: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...


class LocalEngine:
    def __init__(
        self,
        workflow: Workflow,
        limits: Limits,
        prompts: Prompts,
        store: Store,
        client: Client,
        output: JsonlOutput | None,
        stats: RunStats,
        display: Display,
        batch_clients: Mapping[str, Client] | None = None,
        kinds: tuple[str, ...] | None = None,
        stage_clients: Mapping[str, Client] | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``kinds``: the stages this engine runs (default: all; the Ray engine runs the narrow
        ones here); children of other kinds are left to whoever runs those.
        ``stage_clients``: stages that ask an endpoint of their own (a judge), by stage name.
        ``budget``: the run's spending cap, which the clients' requests reserve against
        (``CappedClient``); the engine starts no item while a request waits for room under it,
        and none at all once one was refused."""
        self.pipeline = workflow
        self.limits = limits
        # Deepest first: finishing answers before starting new syllabi keeps the queue short and
        # gets rows out early.
        self.kinds = kinds if kinds is not None else tuple(reversed(workflow.stages))
        self.store = store
        self.client = client
        self.batch_clients = dict(batch_clients or {})  # stage name -> its batch API client
        self.stage_clients = dict(stage_clients or {})
        self.output = output
        self.stats = stats
        self.display = display
        self.prompts = prompts
        self._queues: dict[str, deque[tuple[int, Item]]] = {kind: deque() for kind in self.kinds}
        self._cursor: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self._drained: dict[str, bool] = dict.fromkeys(self.kinds, False)
        self._running: dict[asyncio.Task[None], str] = {}
        self._slot_free = asyncio.Event()
        self._error: BaseException | None = None
        self._parents: OrderedDict[str, Item] = OrderedDict()
        self._fresh_after = float("inf")  # items with a higher rowid were created by this run
        # Upstream stages keep a share of the slots, so syllabi keep coming while questions flow.
        self._reserved = max(1, limits.concurrency // 8)
        # Batched stages fill whole batches, so they get their own, much larger limit: two
        # batches' worth, one filling while the other runs. The other stages keep `concurrency`.
        self._batched = frozenset(
            kind for kind, stage in self.pipeline.stages.items() if stage.name in self.batch_clients
        )
        self._batch_limit = 2 * limits.batch_max_requests
        self._in_flight: Counter[str] = Counter()  # running tasks by kind
        gathered = workflow.gathered[0] if workflow.gathered else ()
        self._gathered = {gathered} if isinstance(gathered, str) else set(gathered)
        self._superseding = False
        self.budget = budget
        self.abandoned = 0  # items still running when a failed write stopped the run

    # -- setup --------------------------------------------------------------------------------

    def prepare(self, roots: list[NewItem], *, active: set[str] | None = None) -> None:
        """Plant the roots, re-queue failed items, re-grow finished nodes if the shape changed.
        ``active``: the roots to work on, when the items were planted already."""
        self.store.set_roots(active if active is not None else {node.root for node in roots})
        self.store.retry_failed()
        self.store.add_nodes(roots)
        signature = self.pipeline.expansion_signature()
        if self.store.get_meta(self.pipeline.signature_key) != signature:
            self._reexpand()
            self.store.set_meta(self.pipeline.signature_key, signature)
        self.store.commit()
        self._fresh_after = self.store.last_rowid()
        self._superseding = self.store.superseding()  # rows may replace earlier rows
        if self.store.get_meta(RESCUED_META):  # replies of items not made yet may be stored
            self._fresh_after = float("inf")
        for kind, statuses in self.store.counts(active_only=True).items():
            name = self._stage_name(kind)
            if name is not None:
                stats = self.stats.stages[name]
                stats.total = sum(statuses.values())
                stats.done = statuses.get("done", 0)

    def _reexpand(self) -> None:
        for kind in self.pipeline.regrow:
            for node in self.store.nodes(kind, "done"):
                self.store.add_nodes(self._children(node))
        if self.pipeline.gathered is not None:
            for parent in self.store.nodes(self.pipeline.gathered[1], "done"):
                self._merge_if_complete(parent.id)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        committer = asyncio.create_task(self._commit_loop())
        self.display.start()
        try:
            await self._schedule()
        finally:
            try:
                running = list(self._running)
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await committer
                if self.store.failure is None:  # after a failed write, nothing more commits
                    self.store.commit()
                if self.output is not None:
                    try:
                        self.output.flush()
                    except OutputWriteError:
                        if self._error is None:  # else that error says what stopped the run
                            raise
            finally:
                self.display.stop()

    async def _schedule(self) -> None:
        # Tasks report their end through a callback: waiting on all running tasks at once would
        # cost O(concurrency) per reply.
        while True:
            while self._error is None:
                picked = self._next()
                if picked is None:
                    break
                stage, node, fresh = picked
                task = asyncio.create_task(self._work(stage, node, fresh))
                self._running[task] = stage.item_kind
                self._in_flight[stage.item_kind] += 1
                task.add_done_callback(self._finished)
            if self._error is not None:
                if isinstance(self._error, StoreError | OutputWriteError):
                    await self._drain()
                raise self._error
            if not self._running:
                return
            self._slot_free.clear()
            await self._slot_free.wait()

    async def _drain(self) -> None:
        """The run cannot write: start nothing more, and give the requests in flight ``DRAIN``
        seconds to come back (each item then stops at its next write: the store takes none)."""
        if isinstance(self._error, OutputWriteError):
            self.store.stop_writing(self._error)
        if self._running:
            await asyncio.wait(list(self._running), timeout=DRAIN)
        self.abandoned = len(self._running)

    def _finished(self, task: asyncio.Task[None]) -> None:
        kind = self._running.pop(task, None)
        if kind is not None:
            self._in_flight[kind] -= 1
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
        self._slot_free.set()

    @property
    def capped(self) -> bool:
        """The run stopped at its spending cap: a request was refused."""
        return self.budget is not None and self.budget.exhausted

    def _next(self) -> tuple[Stage, Item, bool] | None:
        budget = self.budget
        if budget is not None and budget.waiting:
            return None  # what runs may use the room left under the cap
        upstream = self.pipeline.upstream
        upstream_running = sum(self._in_flight[kind] for kind in upstream)
        batched = sum(self._in_flight[kind] for kind in self._batched)
        room = {  # by "is the stage batched"
            False: len(self._running) - batched < self.limits.concurrency,
            True: batched < self._batch_limit,
        }
        order = self.kinds
        if upstream_running < self._reserved:
            order = upstream + tuple(k for k in self.kinds if k not in upstream)
        if budget is not None and budget.exhausted:
            order = tuple(kind for kind in order if budget.holds_room_for(kind))  # the answers
        for kind in order:
            if not room[kind in self._batched]:
                continue
            item = self._pop(kind)
            if item is not None:
                rowid, node = item
                return self.pipeline.stages[kind], node, rowid > self._fresh_after
        return None

    def _pop(self, kind: str) -> tuple[int, Item] | None:
        queue = self._queues[kind]
        if not queue and not self._drained[kind]:
            batch = self.store.pending(kind, self._cursor[kind], BATCH)
            if batch:
                self._cursor[kind] = batch[-1][0]
                queue.extend(batch)
            if len(batch) < BATCH:
                self._drained[kind] = True
        return queue.popleft() if queue else None

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                if self.store.dirty:
                    self.store.commit()
                    if self.output is not None:
                        self.output.flush()
            except Exception as error:  # a full disk: the run stops, saying so
                if self._error is None:
                    self._error = error
                self._slot_free.set()
                return
            self.display.refresh()

    # -- one item -----------------------------------------------------------------------------

    async def _work(self, stage: Stage, node: Item, fresh: bool) -> None:
        """Run one item; ``fresh`` items were created by this run, so none of their replies can
        be stored yet and the lookups are skipped."""
        stats = self.stats.stages[stage.name]
        ORIGIN.set((stage.name, node.id))  # for the batch API's records and the cap's sequels
        teacher = StoredTeacher(
            self.store,
            self.batch_clients.get(stage.name) or self.stage_clients.get(stage.name, self.client),
            self.stats,
            node,
            stage.name,
            self.limits.repair_attempts,
            self.prompts,
            fresh=fresh,
        )
        parent = self._parent(node)
        context = self.pipeline.context(node, self._item)
        if context is not None:
            node = replace(node, context=context)
        try:
            outcome = await attempt(stage, node, parent, teacher)
        except CapReached:
            return  # the item stays pending: a run with a higher cap continues it
        if outcome.error is not None:
            self.store.fail(node, outcome.error)
            stats.failed += 1
            return
        row = self.pipeline.is_row(node)
        stored = self.store.finish(node, outcome.result, output=row)
        if row and self._superseding:
            self.store.supersede(node.id)
        done = node.done(outcome.result)
        children = self._children(done)
        if children:
            self._remember_parent(done)  # its children are about to ask for it
        self._add(children)
        if stage.item_kind in self._gathered and node.parent_id is not None:
            self._merge_if_complete(node.parent_id)
        if row and self.output is not None:
            output = self.output
            self.store.after_commit(lambda: output.write_json(stored))
        # No need to wait for this commit: children are read from the same connection, and
        # after a crash the node is rebuilt for free from its committed calls.
        stats.done += 1

    def _merge_if_complete(self, parent_id: str) -> None:
        siblings = [s for s in self.store.children(parent_id) if s.kind in self._gathered]
        if siblings and all(s.status == "done" for s in siblings):
            parent = self.store.get(parent_id)
            assert parent is not None
            self._add(self.pipeline.merge(parent, siblings))

    def _children(self, node: Item) -> list[NewItem]:
        return [child for child in self.pipeline.children(node) if child.kind in self.kinds]

    def _add(self, nodes: list[NewItem]) -> None:
        for kind in dict.fromkeys(n.kind for n in nodes):
            added = self.store.add_nodes(n for n in nodes if n.kind == kind)
            name = self._stage_name(kind)
            if added and name is not None:
                self._drained[kind] = False
                self.stats.stages[name].total += added

    def _parent(self, node: Item) -> Item:
        if node.parent_id is None:  # a root: what it is asked from is in its own data
            return node
        return self._item(node.parent_id, child=node.id)

    def _item(self, item_id: str, child: str | None = None) -> Item:
        """An item that others are asked from (a parent, a context), kept in a small cache."""
        item = self._parents.get(item_id)
        if item is None:
            item = self.store.get(item_id)
            assert item is not None, f"item {child or '?'} needs {item_id}, which is not stored"
            self._remember_parent(item)
        else:
            self._parents.move_to_end(item_id)
        return item

    def _remember_parent(self, node: Item) -> None:
        self._parents[node.id] = node
        if len(self._parents) > 4096:
            self._parents.popitem(last=False)

    def _stage_name(self, kind: str) -> str | None:
        stage = self.pipeline.stages.get(kind)
        return stage.name if stage else None
