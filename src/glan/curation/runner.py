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
found, and dedup keeps 240 bytes per kept pair (see ``dedup.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from glan.curation.decontaminate import DEFAULT_FIELDS, BenchmarkIndex, load_benchmarks
from glan.curation.dedup import ExactDuplicates, NearDuplicates
from glan.curation.errors import CurationError
from glan.curation.filters import AnswerLeak, Filter, Refusal, TooShort, Truncated, WrongLanguage
from glan.curation.text import normalise
from glan.run.curation import CurationLog, CurationRun
from glan.run.lock import run_lock
from glan.run.ray_parts import refusal
from glan.run.store import DB_NAME, Store

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

    def judge(self, out_seq: int, row: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """Why the pair should go (reason, what it matched), or None to keep it."""
        question, answer = _pair(row)
        meta = row.get("meta") or {}
        if self.benchmarks is not None:
            leak = self.benchmarks.match(question)
            if leak is not None:
                return "decontaminated", leak.as_dict()
        for check in self.filters:
            found = check.check(question, answer, meta)
            if found is not None:
                return check.reason, found
        return self._dedup(out_seq, normalise(question))

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
    """Curate a run directory; the result is also stored, in force for export and report.

    Re-running replaces the previous curation (with the new settings); the generated data is
    never changed.
    """
    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise CurationError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    with run_lock(run_dir, "curate"):  # one writer per run directory
        return _curate(run_dir, config or CurateConfig(), progress)


def _curate(run_dir: Path, config: CurateConfig, progress: Progress | None) -> CurationRun:
    # One connection streams the rows and, in between, commits removals in short transactions
    # (SQLite allows a write while a read statement is open; they touch different tables).
    store = Store.open(run_dir)
    try:
        if why := refusal(store, "glan curate"):
            raise CurationError(why)
        # Benchmarks and filters are loaded before anything is written: a bad file fails first.
        curator = Curator(config, _question_lookup(store))
        log = CurationLog(store)
        through = store.db.execute("SELECT COALESCE(MAX(out_seq), 0) FROM nodes").fetchone()[0]
        run_id = log.start(config.model_dump(mode="json"), through)
        counts: Counter[str] = Counter()
        seen = 0
        for out_seq, row_id, row in _rows_by_id(store, through):
            seen += 1
            verdict = curator.judge(out_seq, row)
            if verdict is not None:
                reason, matched = verdict
                counts[reason] += 1
                log.remove(run_id, row_id, out_seq, reason, _with_ids(store, matched))
            if progress is not None and seen % _PROGRESS_EVERY == 0:
                progress(seen, sum(counts.values()))
        log.finish(
            run_id,
            rows_in=seen,
            rows_kept=seen - sum(counts.values()),
            counts={reason: counts[reason] for reason in REASONS if counts[reason]},
            notes=curator.notes(),
        )
        if progress is not None:
            progress(seen, sum(counts.values()))
        result = log.latest()
        assert result is not None and result.id == run_id
        return result
    finally:
        store.close()


def _pair(row: dict[str, Any]) -> tuple[str, str]:
    question = answer = ""
    for message in row.get("messages") or []:
        content = message.get("content") or ""
        if message.get("role") == "user" and not question:
            question = content
        elif message.get("role") == "assistant" and not answer:
            answer = content
    return question, answer


def _rows_by_id(store: Store, through: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(out_seq, id, row) of every output row up to ``through``, by id.

    ``+out_seq`` keeps SQLite from using the out_seq index (and then sorting a million rows by id):
    it walks the primary-key index instead, in order, a page at a time.
    """
    cursor = store.db.execute(
        "SELECT out_seq, id, result FROM nodes WHERE +out_seq IS NOT NULL AND +out_seq <= ?"
        " ORDER BY id",
        (through,),
    )
    for out_seq, row_id, result in cursor:
        yield out_seq, row_id, orjson.loads(result)


def _question_lookup(store: Store) -> Callable[[int], str]:
    """A kept pair's normalised question, read back from the store (texts are not held)."""

    def text_of(out_seq: int) -> str:
        row = store.db.execute(
            "SELECT json_extract(result, '$.messages[0].content') FROM nodes WHERE out_seq = ?",
            (out_seq,),
        ).fetchone()
        return normalise(row[0] or "") if row else ""

    return text_of


def _with_ids(store: Store, matched: dict[str, Any]) -> dict[str, Any]:
    """Name a duplicate's original by its row id (dedup works with out_seq numbers)."""
    if "duplicate_of" not in matched:
        return matched
    row = store.db.execute(
        "SELECT id FROM nodes WHERE out_seq = ?", (matched["duplicate_of"],)
    ).fetchone()
    return {**matched, "duplicate_of": row[0] if row else None}
