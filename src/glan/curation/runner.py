"""``glan curate``: one streaming pass over a run's pairs, in id order, deciding which stay.

Each pair is judged by the first rule that removes it, in this order:

1. ``decontaminated``: its question shares a long n-gram with a benchmark item;
2. the quality filters: ``too_short``, ``truncated``, ``refusal``, ``answer_leak``,
   ``wrong_language``;
3. ``exact_duplicate`` then ``near_duplicate`` of a pair kept earlier.

A conversation (``--turns`` above 1) is screened turn by turn: a benchmark n-gram in any of its
user turns, or a quality filter failing any turn (a refusal or a cut-off reply in turn 3), removes
the whole conversation, and the finding names the turn. ``answer_leak`` judges the first turn
only: a follow-up that shows the student's own attempt is meant to be quoted by the reply. Dedup
compares conversations by their first question.

Dedup comes last so that a group of duplicates keeps its first *good* pair: had the first one been
a refusal, dedup-first would have removed its duplicates and then the refusal itself, losing the
question altogether. Pairs are visited by id (the order of a stable hash), not by arrival, so the
same run gives the same curated set whatever order its answers came back in.

Memory does not grow with the rows' text: rows stream from SQLite, removals are written as they are
found, and dedup keeps 240 bytes per kept pair (see ``dedup.py``).

Every core: screening (decontamination and the filters) needs no other row, so a large run is
screened by a pool of worker processes (``workers``, all cores by default), a chunk of rows at a
time, with a bounded number of chunks in flight and the verdicts taken back in the order the chunks
went out: the same removals as one process, in the same order. When every worker is busy (or still
starting), this process screens the next chunk itself instead of waiting. Dedup stays in this
process; it computes its MinHashes for a batch of questions at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from glan.curation.decontaminate import DEFAULT_FIELDS, BenchmarkIndex, load_benchmarks
from glan.curation.dedup import ExactDuplicates, NearDuplicates
from glan.curation.errors import CurationError
from glan.curation.filters import (
    AnswerLeak,
    Filter,
    Pair,
    Refusal,
    TooShort,
    Truncated,
    WrongLanguage,
)
from glan.curation.text import normalise
from glan.run import Run, is_run, open_run
from glan.run.curation import CurationLog, CurationRun
from glan.run.lock import run_lock
from glan.run.parts import StateDir
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
# What the filters read of a row's meta (the rest of it is not sent to the workers).
_SCREEN_META = ("truncated", "language")
FIRST_TURN_ONLY = frozenset({"answer_leak"})  # filters that judge a conversation's first turn

Progress = Callable[[int, int], None]  # (pairs seen, pairs removed)


class CurateConfig(BaseModel):
    """What ``glan curate`` checks; every filter can be turned off or tuned."""

    model_config = ConfigDict(extra="forbid")

    # decontamination
    benchmarks: list[str] = []
    benchmark_fields: list[str] = list(DEFAULT_FIELDS)
    ngram: int = Field(default=13, ge=1)
    min_benchmark_words: int = Field(default=8, ge=1)
    # dedup
    dedup: bool = True
    near_dup: bool = True
    near_dup_threshold: float = Field(default=0.8, gt=0, le=1)
    shingle: int = Field(default=5, ge=1)
    num_perm: int = Field(default=128, ge=16, le=1024)
    # filters
    min_question_chars: int = Field(default=10, ge=0)
    min_answer_chars: int = Field(default=20, ge=0)
    drop_truncated: bool = True
    drop_refusals: bool = True
    refusal_patterns: list[str] = []
    drop_leaks: bool = True
    leak_overlap: float = Field(default=0.5, gt=0, le=1)
    language: str | None = None  # None: each row's meta.language (else English); "any": no check
    language_confidence: float = Field(default=0.9, ge=0, le=1)
    # the review (glan judge): pairs not judged or not verified are kept
    min_score: float | None = Field(default=None, ge=1, le=10)  # the judge's overall score
    min_agreement: float | None = Field(default=None, ge=0, le=1)  # share of samples agreeing
    # speed
    workers: int | None = Field(default=None, ge=1)  # screening processes; None: every core


class Screener:
    """Judges a pair on its own merits: decontamination, then the quality filters."""

    def __init__(self, config: CurateConfig) -> None:
        self.benchmarks: BenchmarkIndex | None = None
        if config.benchmarks:  # first: a bad benchmark file fails before the slower set-up
            self.benchmarks = load_benchmarks(
                config.benchmarks, config.benchmark_fields, config.ngram, config.min_benchmark_words
            )
        self.filters = build_filters(config)

    def screen(
        self, turns: list[tuple[str, str]], meta: dict[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        """A conversation's turns (question, answer), each checked: a refusal in turn 3 counts."""
        pairs = [Pair(question, answer, meta) for question, answer in turns]
        if self.benchmarks is not None:
            for number, pair in enumerate(pairs, 1):
                leak = self.benchmarks.match_words(pair.question_words)
                if leak is not None:
                    return "decontaminated", _in_turn(leak.as_dict(), number)
        for number, pair in enumerate(pairs, 1):
            for check in self.filters:
                if number > 1 and check.reason in FIRST_TURN_ONLY:
                    continue
                found = check.judge(pair)
                if found is not None:
                    return check.reason, _in_turn(found, number)
        return None

    def screen_chunk(self, chunk: list[Screened]) -> list[Verdict]:
        """(position in the chunk, reason, found) of each pair of the chunk that should go."""
        verdicts = []
        for i, (turns, meta) in enumerate(chunk):
            verdict = self.screen(turns, meta)
            if verdict is not None:
                verdicts.append((i, *verdict))
        return verdicts


Verdict = tuple[int, str, dict[str, Any]]  # (position in the chunk, reason, what it found)
Screened = tuple[list[tuple[str, str]], dict[str, Any]]  # a row's turns and the meta screened


class Curator:
    """Judges pairs one at a time; remembers the kept ones for dedup."""

    def __init__(
        self,
        config: CurateConfig,
        text_of: Callable[[int], str],
        reviews: dict[str, Review] | None = None,
    ) -> None:
        self.config = config
        self.reviews = reviews or {}
        self.screener = Screener(config)
        self.benchmarks = self.screener.benchmarks
        self.filters = self.screener.filters
        self.exact = ExactDuplicates(text_of) if config.dedup else None
        self.near = (
            NearDuplicates(
                threshold=config.near_dup_threshold,
                shingle=config.shingle,
                num_perm=config.num_perm,
                text_of=text_of,
            )
            if config.dedup and config.near_dup
            else None
        )

    def screen(self, row: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """Why the pair should go on its own merits (a benchmark leak, a quality filter), or
        None: a verdict that needs no other row, so rows may come in any order."""
        found = self.screener.screen(_turns(row), row.get("meta") or {})
        return found if found is not None else self.reviewed(row["id"])

    def reviewed(self, row_id: str) -> tuple[str, dict[str, Any]] | None:
        """Why the review (glan judge) says the pair should go: a low score, or an answer
        most extra answers contradict."""
        review = self.reviews.get(row_id)
        if review is None:
            return None
        floor, agreed = self.config.min_score, self.config.min_agreement
        if floor is not None and review.score is not None and review.score < floor:
            return "low_score", {"score": review.score, "reason": review.reason}
        found = review.agreement
        share = found.share if found is not None else None
        if agreed is not None and found is not None and share is not None and share < agreed:
            return "contradicted", {
                "agree": found.agree,
                "of": found.of,
                "majority": found.majority,
            }
        return None

    def dedup(self, seq: int, question: str) -> tuple[str, dict[str, Any]] | None:
        """Why the pair duplicates one kept before it, or None (then it is kept, and later
        pairs are compared with it). Called in id order, on pairs that passed ``screen``."""
        return self.dedup_many([(seq, question)])[0]

    def dedup_many(self, pairs: list[tuple[int, str]]) -> list[tuple[str, dict[str, Any]] | None]:
        """``dedup`` of several pairs in a row (in id order), their MinHashes computed at once."""
        texts = [normalise(question) for _, question in pairs]
        probes: list[Any] = [None] * len(texts)
        if self.near is not None:
            probes = self.near.probe_many(texts)
            self.near.prefetch(probes)
        if self.exact is not None:
            self.exact.prefetch(texts)
        try:
            return [
                self._dedup(seq, text, probe)
                for (seq, _), text, probe in zip(pairs, texts, probes, strict=True)
            ]
        finally:
            if self.near is not None:
                self.near.end_prefetch()
            if self.exact is not None:
                self.exact.end_prefetch()

    def _dedup(self, out_seq: int, text: str, probe: Any) -> tuple[str, dict[str, Any]] | None:
        if self.exact is not None:
            original = self.exact.match(text)
            if original is not None:
                return "exact_duplicate", {"duplicate_of": original}
        if self.near is not None:
            similar = self.near.match(probe)
            if similar is not None:
                return "near_duplicate", {
                    "duplicate_of": similar.key,
                    "jaccard": round(similar.jaccard, 3),
                }
            self.near.add(probe, out_seq)
        if self.exact is not None:
            self.exact.add(text, out_seq)
        return None

    def notes(self) -> dict[str, Any]:
        """What this curation loaded and chose, for the report."""
        notes: dict[str, Any] = {}
        if self.benchmarks is not None:
            notes["benchmarks"] = [
                {"name": b.name, "field": b.field, "items": b.items, "indexed": b.indexed}
                for b in self.benchmarks.benchmarks
            ]
        if self.near is not None:
            notes["lsh"] = {"bands": self.near.bands, "rows": self.near.rows}
        return notes


def build_filters(config: CurateConfig) -> list[Filter]:
    filters: list[Filter] = [TooShort(config.min_question_chars, config.min_answer_chars)]
    if config.drop_truncated:
        filters.append(Truncated())
    if config.drop_refusals:
        filters.append(Refusal(config.refusal_patterns))
    if config.drop_leaks:
        filters.append(AnswerLeak(config.leak_overlap))
    if (config.language or "").casefold() not in ("any", "none", "off"):
        filters.append(WrongLanguage(config.language, config.language_confidence))
    return filters


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
        # Benchmarks and filters are loaded before anything is written: a bad file fails first.
        curator = Curator(config, lambda seq: normalise(run.question(seq)), _reviews(run, config))
        log = CurationLog(run.store)
        through = run.last_seq()
        run_id = log.start(config.model_dump(mode="json"), through)
        tally = _Tally(progress)
        screened_out = bytearray(through + 1)  # one byte a row: memory stays flat in the texts
        with contextlib.closing(screen(run, through, curator, tally)) as removals:
            for seq, row_id, reason, found in removals:
                screened_out[seq] = 1
                tally.remove(log, run_id, row_id, seq, reason, found)
        for batch in _batches(
            (item for item in run.questions_by_id(through) if not screened_out[item[0]]),
            _DEDUP_BATCH,
        ):
            verdicts = curator.dedup_many([(seq, question) for seq, _, question in batch])
            for (seq, row_id, _), verdict in zip(batch, verdicts, strict=True):
                if verdict is not None:
                    reason, matched = verdict
                    tally.remove(log, run_id, row_id, seq, reason, _with_ids(run, matched))
        log.finish(
            run_id,
            rows_in=tally.seen,
            rows_kept=tally.seen - tally.removed,
            counts={reason: tally.counts[reason] for reason in REASONS if tally.counts[reason]},
            notes=curator.notes(),
        )
        tally.report()
        result = log.latest()
        assert result is not None and result.id == run_id
        return result
    finally:
        run.close()


def workers(config: CurateConfig) -> int:
    """How many processes screen: ``config.workers``, else one per core this process may use."""
    if config.workers is not None:
        return config.workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def screen(
    run: Run, through: int, curator: Curator, tally: _Tally
) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(seq, row id, reason, found) of every row up to ``through`` that screening removes, in
    output order; in a pool of worker processes when there are enough rows and cores."""
    chunks = _batches(_screen_items(run, through, tally), _CHUNK)
    count = workers(curator.config)
    if count <= 1 or through < _POOL_MIN_ROWS:
        for chunk in chunks:
            keys = [item[:2] for item in chunk]
            yield from _removals(
                curator, keys, curator.screener.screen_chunk([item[2:] for item in chunk])
            )
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with open files
    pool = ProcessPoolExecutor(
        count,
        mp_context=context,
        initializer=_start_worker,
        initargs=(curator.config.model_dump(mode="json"),),
    )
    pending: deque[tuple[list[Any], Future[list[Verdict]]]] = deque()
    try:
        for chunk in chunks:
            keys = [item[:2] for item in chunk]
            pairs = [item[2:] for item in chunk]
            del chunk
            if len(pending) >= _IN_FLIGHT * count and not pending[0][1].done():
                # rather than wait (the workers are starting, or busy): screen it here
                done: Future[list[Verdict]] = Future()
                done.set_result(curator.screener.screen_chunk(pairs))
                pending.append((keys, done))
            else:
                pending.append((keys, pool.submit(_screen_in_worker, pairs)))
            while pending and (len(pending) > _IN_FLIGHT * count or pending[0][1].done()):
                keys, future = pending.popleft()
                yield from _removals(curator, keys, future.result())
        while pending:
            keys, future = pending.popleft()
            yield from _removals(curator, keys, future.result())
    except BrokenProcessPool:
        raise CurationError(
            "the screening workers stopped; a script that calls curate() needs"
            ' `if __name__ == "__main__":` around it (the workers start by importing it),'
            " or pass workers=1"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _screen_items(
    run: Run, through: int, tally: _Tally
) -> Iterator[tuple[int, str, list[tuple[str, str]], dict[str, Any]]]:
    """(seq, id, turns, meta the filters read) of each row up to ``through``."""
    for seq, row in run.rows():
        if seq > through:
            break
        tally.see()
        meta = row.get("meta") or {}
        yield seq, row["id"], _turns(row), {k: meta[k] for k in _SCREEN_META if k in meta}


def _removals(
    curator: Curator, keys: list[tuple[int, str]], verdicts: list[Verdict]
) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(seq, id, reason, found) of a chunk's removals: the screen's, then the review's (which
    the main process holds) among the rest."""
    for i, reason, found in verdicts:
        yield keys[i][0], keys[i][1], reason, found
    if curator.reviews:
        screened = {i for i, _, _ in verdicts}
        for i, (seq, row_id) in enumerate(keys):
            verdict = curator.reviewed(row_id) if i not in screened else None
            if verdict is not None:
                yield seq, row_id, *verdict


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_worker_screener: Screener | None = None


def _start_worker(config: dict[str, Any]) -> None:
    global _worker_screener
    _worker_screener = Screener(CurateConfig.model_validate(config))


def _screen_in_worker(chunk: list[Screened]) -> list[Verdict]:
    assert _worker_screener is not None
    return _worker_screener.screen_chunk(chunk)


class _Tally:
    """Removals by reason, and progress every ``_PROGRESS_EVERY`` pairs."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.seen = 0

    @property
    def removed(self) -> int:
        return sum(self.counts.values())

    def remove(
        self, log: CurationLog, run_id: int, row_id: str, seq: int, reason: str, matched: Any
    ) -> None:
        self.counts[reason] += 1
        log.remove(run_id, row_id, seq, reason, matched)

    def see(self) -> None:
        self.seen += 1
        if self.seen % _PROGRESS_EVERY == 0:
            self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.seen, self.removed)


def _turns(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) of each turn: a user message and the assistant's reply after it (""
    when there is none). A row with no user message has one empty turn."""
    turns: list[tuple[str, str]] = []
    for message in row.get("messages") or []:
        content = message.get("content") or ""
        if message.get("role") == "user":
            turns.append((content, ""))
        elif message.get("role") == "assistant" and turns and not turns[-1][1]:
            turns[-1] = (turns[-1][0], content)
    return turns or [("", "")]


def _in_turn(found: dict[str, Any], number: int) -> dict[str, Any]:
    """A finding, with the turn it is in when that is not the first."""
    return found if number == 1 else {**found, "turn": number}


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


def _with_ids(run: Run, matched: dict[str, Any]) -> dict[str, Any]:
    """Name a duplicate's original by its row id (dedup works with seq numbers)."""
    if "duplicate_of" not in matched:
        return matched
    return {**matched, "duplicate_of": run.row_id(matched["duplicate_of"])}
