"""``glan curate``: one streaming pass over a run's pairs, in id order, deciding which stay.

Each pair is judged by the first rule that removes it, in this order:

1. ``decontaminated``: its question shares a long n-gram with a benchmark item;
2. the quality filters: ``too_short``, ``truncated``, ``refusal``, ``answer_leak``,
   ``wrong_language``;
3. ``exact_duplicate`` then ``near_duplicate`` of a pair kept earlier.

Dedup comes last so that a group of duplicates keeps its first *good* pair: had the first one been
a refusal, dedup-first would have removed its duplicates and then the refusal itself, losing the
question altogether. Pairs are visited by id (the order of a stable hash), not by arrival, so the
same run gives the same curated set whatever order its answers came back in.

Memory does not grow with the rows' text: rows stream from SQLite, removals are written as they are
found, and dedup keeps 121 bytes per row (its keys; see ``dedup.py``).

Every core: screening (decontamination and the filters) needs no other row, so a large run is
screened by a pool of worker processes (``workers``, all cores by default), a chunk of rows at a
time, with a bounded number of chunks in flight and the verdicts taken back in the order the chunks
went out: the same removals as one process, in the same order. When every worker is busy (or still
starting), this process screens the next chunk itself instead of waiting. The workers also compute
what dedup needs of each question that stays (its digest and MinHash band keys), so this process
only finds, with a few sorts, the rows that share a key with another, and judges those few in id
order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glan.curation.config import CurateConfig
from glan.curation.dedup import Deduper, NearDuplicates
from glan.curation.errors import CurationError
from glan.curation.screen import (
    Rows,
    Screened,
    Screener,
    Task,
    row_item,
    screen_in_worker,
    start_worker,
)
from glan.curation.text import normalise
from glan.run import ENGINE_META, Run, is_run, open_run
from glan.run.curation import CurationLog, CurationRun
from glan.run.lock import run_lock
from glan.run.parts import StateDir
from glan.run.reader import OutputReader
from glan.run.store import DB_NAME
from glan.stages.review import Review, reviews

# Every reason a pair can be removed for, in the order they are tried.
REASONS = (
    "decontaminated",
    "too_short",
    "truncated",
    "refusal",
    "answer_leak",
    "wrong_language",
    "low_score",
    "contradicted",
    "exact_duplicate",
    "near_duplicate",
)
_PROGRESS_EVERY = 10_000
_CHUNK = 512  # rows a worker screens at a time
_IN_FLIGHT = 3  # chunks per worker queued or being screened: memory stays bounded
_POOL_MIN_ROWS = 20_000  # below this, starting worker processes costs more than they save
_DEDUP_BATCH = 1024  # questions whose MinHashes are computed together

Progress = Callable[[int, int], None]  # (pairs seen, pairs removed)


def curate(
    run_dir: str | Path, config: CurateConfig | None = None, *, progress: Progress | None = None
) -> CurationRun:
    """Curate a run directory, local or Ray; the result is also stored, in force for export and
    report.

    Two passes: every pair is screened on its own (in output order, as the rows stream), then
    the survivors are de-duplicated in id order, so a group of duplicates keeps its first *good*
    pair. Re-running replaces the previous curation (with the new settings); the generated data
    is never changed.
    """
    if not is_run(run_dir):
        raise CurationError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    # one writer per run directory: the lock is where glan.db is (a Ray run's state directory)
    with run_lock(StateDir(str(run_dir)).path, "curate"):
        return _curate(run_dir, config or CurateConfig(), progress)


def _curate(run_dir: str | Path, config: CurateConfig, progress: Progress | None) -> CurationRun:
    run = open_run(run_dir, write=True)
    try:
        config = where(run, config)
        # Benchmarks and filters are loaded before anything is written: a bad file fails first.
        screener = Screener(config)
        reviews = _reviews(run, config)
        log = CurationLog(run.store)
        through = run.last_seq()
        run_id = log.start(config.model_dump(mode="json"), through)
        tally = _Tally(progress, log, run_id)
        deduper = _deduper(run, through, config, screener)
        one = _Pass(run, through, config, screener, reviews, deduper, tally)
        if config.engine == "ray":
            _screen_on_ray(one)
        else:
            _screen_here(one)
        if deduper is not None:
            for seq, row_id, reason, matched in _dedup(run, deduper):
                tally.remove(row_id, seq, reason, matched)
        log.finish(
            run_id,
            rows_in=tally.seen,
            rows_kept=tally.seen - tally.removed,
            counts={reason: tally.counts[reason] for reason in REASONS if tally.counts[reason]},
            notes=_notes(screener),
        )
        tally.report()
        result = log.latest()
        assert result is not None and result.id == run_id
        return result
    finally:
        run.close()


def where(run: Run, config: CurateConfig) -> CurateConfig:
    """``config`` with ``engine: auto`` settled: Ray Data on the cluster a Ray run was generated
    on (its rows are where that cluster reads them), else this machine's processes; a Ray run
    made on one machine is screened faster here (Ray takes seconds to start)."""
    if config.engine != "auto":
        return config
    made = run.store.last_invocation().get("ray") or {}
    cluster = made.get("address") if run.store.get_meta(ENGINE_META) == "ray" else None
    if cluster is None:
        return config.model_copy(update={"engine": "local"})
    return config.model_copy(update={"engine": "ray", "ray_address": config.ray_address or cluster})


@dataclass
class _Pass:
    """One curation: the rows it reads (up to ``through``), how it judges them, and the tally
    its removals are recorded through."""

    run: Run
    through: int
    config: CurateConfig
    screener: Screener
    reviews: dict[str, Review]
    deduper: Deduper | None
    tally: _Tally


def _screen_here(one: _Pass) -> None:
    """Screen on this machine (a pool of processes), recording removals as they come, and give
    dedup the keys of the rows that stay."""
    chunks = screen(one.run, one.through, one.config, one.screener, one.tally)
    with contextlib.closing(chunks):
        for keys, screened in chunks:
            gone = set()
            for i, reason, found in screened.verdicts:
                gone.add(i)
                one.tally.remove(keys[i][1], keys[i][0], reason, found)
            # the rest, and their dedup keys (in the same order), less the review's removals
            staying = [key for i, key in enumerate(keys) if i not in gone]
            kept = list(range(len(staying)))
            if one.reviews:
                kept = []
                for j, (seq, row_id) in enumerate(staying):
                    verdict = _reviewed(one.reviews, one.config, row_id)
                    if verdict is None:
                        kept.append(j)
                    else:
                        one.tally.remove(row_id, seq, *verdict)
            if one.deduper is not None and screened.keys is not None:
                one.deduper.add([staying[j][0] for j in kept], screened.keys.take(kept))


def _screen_on_ray(one: _Pass) -> None:
    """``_screen_here`` as Ray Data (see ``on_ray.py``): the review's removals are decided here
    and applied by the actors to the rows screening keeps; only the rows that share a dedup key
    with another come back with their keys."""
    from glan.curation.on_ray import screen_on_ray

    reviewed = {}
    for row_id in one.reviews:
        verdict = _reviewed(one.reviews, one.config, row_id)
        if verdict is not None:
            reviewed[row_id] = verdict
    screening = screen_on_ray(one.run, one.through, one.config, one.screener, reviewed)
    one.tally.seen = screening.seen
    for seq, row_id, reason, found in screening.removals():
        one.tally.remove(row_id, seq, reason, found)
    if one.deduper is not None:
        screening.colliding(one.deduper)


def _deduper(run: Run, through: int, config: CurateConfig, screener: Screener) -> Deduper | None:
    if not config.dedup:
        return None

    def text_of(seq: int) -> str:
        return normalise(run.question(seq))

    near = None
    if screener.near is not None:
        near = NearDuplicates(
            threshold=config.near_dup_threshold,
            shingle=config.shingle,
            num_perm=config.num_perm,
            text_of=text_of,
            params=screener.lsh,
        )
    return Deduper(through, near, text_of)


def _dedup(run: Run, deduper: Deduper) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(seq, row id, reason, found) of every duplicate: the rows that share a dedup key with
    another are judged in id order, their questions read from the run a batch at a time."""
    colliding = deduper.colliding().tolist()
    ids = run.ids_at(colliding)
    for batch in _batches(sorted(ids.items(), key=lambda item: item[1]), _DEDUP_BATCH):
        questions = run.questions_at([seq for seq, _ in batch])
        verdicts = deduper.judge_many([(seq, normalise(questions[seq])) for seq, _ in batch])
        for (seq, row_id), verdict in zip(batch, verdicts, strict=True):
            if verdict is not None:
                reason, matched = verdict
                # name the original by its row id (dedup works with row numbers)
                yield seq, row_id, reason, {**matched, "duplicate_of": ids[matched["duplicate_of"]]}


def _reviewed(
    reviews: dict[str, Review], config: CurateConfig, row_id: str
) -> tuple[str, dict[str, Any]] | None:
    """Why the review (glan judge) says the pair should go: a low score, or an answer most
    extra answers contradict."""
    review = reviews.get(row_id)
    if review is None:
        return None
    floor, agreed = config.min_score, config.min_agreement
    if floor is not None and review.score is not None and review.score < floor:
        return "low_score", {"score": review.score, "reason": review.reason}
    found = review.agreement
    share = found.share if found is not None else None
    if agreed is not None and found is not None and share is not None and share < agreed:
        return "contradicted", {"agree": found.agree, "of": found.of, "majority": found.majority}
    return None


def _notes(screener: Screener) -> dict[str, Any]:
    """What this curation loaded and chose, for the report."""
    notes: dict[str, Any] = {}
    if screener.benchmarks is not None:
        notes["benchmarks"] = [
            {"name": b.name, "field": b.field, "items": b.items, "indexed": b.indexed}
            for b in screener.benchmarks.benchmarks
        ]
    if screener.near is not None:
        notes["lsh"] = {"bands": screener.near.bands, "rows": screener.near.rows}
    return notes


def workers(config: CurateConfig) -> int:
    """How many processes screen: ``config.workers``, else one per core this process may use."""
    if config.workers is not None:
        return config.workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def screen(
    run: Run, through: int, config: CurateConfig, screener: Screener, tally: _Tally
) -> Iterator[tuple[Rows, Screened]]:
    """(seq and id of each row, what screening found) of every chunk of rows up to ``through``,
    in output order; in a pool of worker processes when there are enough rows and cores.

    The workers read their chunks' rows themselves when the run lets another process read rows
    by number (a local run's store), so this process neither parses nor sends them.
    """
    reader = run.reader()
    tasks: Iterable[Task]
    if reader is not None:
        starts = range(1, through + 1, _CHUNK)
        tasks = ((first, min(first + _CHUNK - 1, through)) for first in starts)
    else:
        tasks = _batches(_row_items(run, through), _CHUNK)
    try:
        count = workers(config)
        if count <= 1 or through < _POOL_MIN_ROWS:
            for task in tasks:
                yield tally.saw(screener.screen_task(task, reader))
            return
        yield from _screen_in_pool(tasks, count, config, screener, reader, tally)
    finally:
        if reader is not None:
            reader.close()


def _screen_in_pool(
    tasks: Iterable[Task],
    count: int,
    config: CurateConfig,
    screener: Screener,
    reader: OutputReader | None,
    tally: _Tally,
) -> Iterator[tuple[Rows, Screened]]:
    context = multiprocessing.get_context("spawn")  # no fork of a process with open files
    pool = ProcessPoolExecutor(
        count,
        mp_context=context,
        initializer=start_worker,
        initargs=(config.model_dump(mode="json"), screener.lsh, reader),
    )
    pending: deque[Future[tuple[Rows, Screened]]] = deque()
    try:
        for task in tasks:
            if len(pending) >= _IN_FLIGHT * count and not pending[0].done():
                # rather than wait (the workers are starting, or busy): screen it here
                done: Future[tuple[Rows, Screened]] = Future()
                done.set_result(screener.screen_task(task, reader))
                pending.append(done)
            else:
                pending.append(pool.submit(screen_in_worker, task))
            del task
            while pending and (len(pending) > _IN_FLIGHT * count or pending[0].done()):
                yield tally.saw(pending.popleft().result())
        while pending:
            yield tally.saw(pending.popleft().result())
    except BrokenProcessPool:
        raise CurationError(
            "the screening workers stopped; a script that calls curate() needs"
            ' `if __name__ == "__main__":` around it (the workers start by importing it),'
            " or pass workers=1"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _row_items(run: Run, through: int) -> Iterator[tuple[Any, ...]]:
    """(seq, id, *Item) of each row up to ``through``, read here."""
    for seq, row in run.rows():
        if seq > through:
            break
        yield row_item(seq, row)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Tally:
    """Removals by reason, recorded in the curation log as they are found, and progress every
    ``_PROGRESS_EVERY`` pairs."""

    def __init__(self, progress: Progress | None, log: CurationLog, run_id: int) -> None:
        self.progress = progress
        self.log = log
        self.run_id = run_id
        self.counts: Counter[str] = Counter()
        self.seen = 0

    @property
    def removed(self) -> int:
        return sum(self.counts.values())

    def remove(self, row_id: str, seq: int, reason: str, matched: Any) -> None:
        self.counts[reason] += 1
        self.log.remove(self.run_id, row_id, seq, reason, matched)

    def saw(self, chunk: tuple[Rows, Screened]) -> tuple[Rows, Screened]:
        """Count a chunk's rows as seen (and report progress every ``_PROGRESS_EVERY``)."""
        before = self.seen
        self.seen += len(chunk[0])
        if self.seen // _PROGRESS_EVERY > before // _PROGRESS_EVERY:
            self.report()
        return chunk

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.seen, self.removed)


def _reviews(run: Run, config: CurateConfig) -> dict[str, Review]:
    """The review of every reviewed pair, when a threshold needs it."""
    if config.min_score is None and config.min_agreement is None:
        return {}
    found = reviews(run.store)
    if config.min_score is not None and not any(r.score is not None for r in found.values()):
        raise CurationError("--min-score needs judged pairs: run glan judge on the run first")
    if config.min_agreement is not None and not any(r.agreement for r in found.values()):
        raise CurationError(
            "--min-agreement needs verified pairs: run glan judge --verify N on the run first"
        )
    return found
