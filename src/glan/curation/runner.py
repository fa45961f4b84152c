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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from glan.curation.decontaminate import DEFAULT_FIELDS, BenchmarkIndex, load_benchmarks
from glan.curation.dedup import ExactDuplicates, NearDuplicates
from glan.curation.errors import CurationError
from glan.curation.filters import AnswerLeak, Filter, Refusal, TooShort, Truncated, WrongLanguage
from glan.curation.text import normalise
from glan.run import Run, is_run, open_run
from glan.run.curation import CurationLog, CurationRun
from glan.run.lock import run_lock
from glan.run.parts import StateDir
from glan.run.store import DB_NAME

# Every reason a pair can be removed for, in the order they are tried.
REASONS = (
    "decontaminated",
    "too_short",
    "truncated",
    "refusal",
    "answer_leak",
    "wrong_language",
    "exact_duplicate",
    "near_duplicate",
)
_PROGRESS_EVERY = 10_000
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


class Curator:
    """Judges pairs one at a time; remembers the kept ones for dedup."""

    def __init__(self, config: CurateConfig, text_of: Callable[[int], str]) -> None:
        self.config = config
        self.benchmarks: BenchmarkIndex | None = None
        if config.benchmarks:  # first: a bad benchmark file fails before the slower set-up
            self.benchmarks = load_benchmarks(
                config.benchmarks, config.benchmark_fields, config.ngram, config.min_benchmark_words
            )
        self.filters = build_filters(config)
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
        turns = _turns(row)
        meta = row.get("meta") or {}
        if self.benchmarks is not None:
            for number, (question, _) in enumerate(turns, 1):
                leak = self.benchmarks.match(question)
                if leak is not None:
                    return "decontaminated", _in_turn(leak.as_dict(), number)
        for number, (question, answer) in enumerate(turns, 1):
            for check in self.filters:
                if number > 1 and check.reason in FIRST_TURN_ONLY:
                    continue
                found = check.check(question, answer, meta)
                if found is not None:
                    return check.reason, _in_turn(found, number)
        return None

    def dedup(self, seq: int, question: str) -> tuple[str, dict[str, Any]] | None:
        """Why the pair duplicates one kept before it, or None (then it is kept, and later
        pairs are compared with it). Called in id order, on pairs that passed ``screen``."""
        return self._dedup(seq, normalise(question))

    def _dedup(self, out_seq: int, text: str) -> tuple[str, dict[str, Any]] | None:
        if self.exact is not None:
            original = self.exact.match(text)
            if original is not None:
                return "exact_duplicate", {"duplicate_of": original}
        if self.near is not None:
            probe = self.near.probe(text)
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
        curator = Curator(config, lambda seq: normalise(run.question(seq)))
        log = CurationLog(run.store)
        through = run.last_seq()
        run_id = log.start(config.model_dump(mode="json"), through)
        tally = _Tally(progress)
        screened_out = bytearray(through + 1)  # one byte a row: memory stays flat in the texts
        for seq, row in run.rows():
            if seq > through:
                break
            tally.see()
            verdict = curator.screen(row)
            if verdict is not None:
                screened_out[seq] = 1
                tally.remove(log, run_id, row["id"], seq, *verdict)
        for seq, row_id, question in run.questions_by_id(through):
            if not screened_out[seq]:
                verdict = curator.dedup(seq, question)
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


def _with_ids(run: Run, matched: dict[str, Any]) -> dict[str, Any]:
    """Name a duplicate's original by its row id (dedup works with seq numbers)."""
    if "duplicate_of" not in matched:
        return matched
    return {**matched, "duplicate_of": run.row_id(matched["duplicate_of"])}
