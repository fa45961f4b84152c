"""Screening: each pair judged on its own merits (decontamination, then the quality filters), and
the keys dedup will need of its question, in worker processes or in the main one.

A conversation (``--turns`` above 1) is screened turn by turn: a benchmark n-gram in any of its
user turns, or a quality filter failing any turn (a refusal or a cut-off reply in turn 3), removes
the whole conversation, and the finding names the turn. ``answer_leak`` judges the first turn
only: a follow-up that shows the student's own attempt is meant to be quoted by the reply. Dedup
compares conversations by their first question.

This module is what a screening worker imports, so it imports only the checks: no pydantic
config, no run directory, no engine (``glan`` and ``glan.curation`` import their names when
first used). A worker's settings arrive as the config's plain dict.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from glan.curation.decontaminate import BenchmarkIndex, load_benchmarks
from glan.curation.dedup import DedupKeys, NearDuplicates, dedup_keys
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

if TYPE_CHECKING:
    from glan.curation.config import CurateConfig

Found = dict[str, Any]
Verdict = tuple[int, str, Found]  # (position in the chunk, reason, what was found)
Turns = list[tuple[str, str]]  # (question, answer) of each turn of a conversation
# What a chunk holds of each row: its turns, the meta the filters read, and the text dedup
# compares (the first message's, which is the question in every row glan writes)
Item = tuple[Turns, dict[str, Any], str]
# What the filters read of a row's meta (the rest of it is not sent to the workers).
_SCREEN_META = ("truncated", "language")
FIRST_TURN_ONLY = frozenset({"answer_leak"})  # filters that judge a conversation's first turn
# A chunk of rows to screen: the numbers of the first and last (a worker reads them itself), or
# the rows as (seq, id, *Item) when only the main process can read them
Task = tuple[int, int] | list[tuple[Any, ...]]
Rows = list[tuple[int, str]]  # (seq, id) of each row of a chunk


class Screened(NamedTuple):
    verdicts: list[Verdict]  # the pairs of the chunk that go, and why
    keys: DedupKeys | None  # of the other pairs, in chunk order (None: no dedup)


class RowReader(Protocol):
    def rows(self, first: int, last: int) -> list[tuple[int, Any]]: ...


class Screener:
    """Judges a pair on its own merits: decontamination, then the quality filters; and computes
    the dedup keys of those that stay."""

    def __init__(
        self,
        config: CurateConfig | SimpleNamespace,
        lsh: tuple[int, int] | None = None,
        *,
        benchmarks: BenchmarkIndex | None = None,
    ) -> None:
        # ``benchmarks``: the index the driver loaded, handed to Ray actors rather than loaded
        # from files again (which the cluster's nodes may not have)
        self.benchmarks: BenchmarkIndex | None = benchmarks
        if config.benchmarks and benchmarks is None:  # first: a bad file fails before the rest
            self.benchmarks = load_benchmarks(
                config.benchmarks, config.benchmark_fields, config.ngram, config.min_benchmark_words
            )
        self.filters = build_filters(config)
        self.dedup = bool(config.dedup)
        self.near: NearDuplicates | None = None
        if config.dedup and config.near_dup:
            self.near = NearDuplicates(
                threshold=config.near_dup_threshold,
                shingle=config.shingle,
                num_perm=config.num_perm,
                text_of=_no_texts,
                params=lsh,
            )

    @property
    def lsh(self) -> tuple[int, int] | None:
        """The LSH (bands, rows), for workers to use without choosing them again."""
        return (self.near.bands, self.near.rows) if self.near is not None else None

    def screen(self, turns: Turns, meta: dict[str, Any]) -> tuple[str, Found] | None:
        return self._screen([Pair(question, answer, meta) for question, answer in turns])

    def _screen(self, pairs: list[Pair]) -> tuple[str, Found] | None:
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

    def screen_chunk(self, chunk: list[Item]) -> Screened:
        """The verdicts on a chunk's pairs, and the dedup keys of the pairs that stay."""
        verdicts: list[Verdict] = []
        texts: list[str] = []
        for i, (turns, meta, text) in enumerate(chunk):
            pairs = [Pair(question, answer, meta) for question, answer in turns]
            verdict = self._screen(pairs)
            if verdict is not None:
                verdicts.append((i, *verdict))
            elif self.dedup:
                # the question's words are often read already (decontamination, the leak check)
                first = pairs[0]
                same = text is first.question
                texts.append(" ".join(first.question_words) if same else normalise(text))
        return Screened(verdicts, dedup_keys(texts, self.near) if self.dedup else None)

    def screen_task(self, task: Task, reader: RowReader | None) -> tuple[Rows, Screened]:
        """The rows of a chunk (seq, id) and what screening found of them."""
        if isinstance(task, tuple):
            assert reader is not None
            task = [row_item(seq, row) for seq, row in reader.rows(*task)]
        return [item[:2] for item in task], self.screen_chunk([item[2:] for item in task])


def row_item(seq: int, row: dict[str, Any]) -> tuple[Any, ...]:
    """(seq, id, *Item) of a row: what screening reads of it."""
    meta = row.get("meta") or {}
    return (
        seq,
        row["id"],
        turns_of(row),
        {k: meta[k] for k in _SCREEN_META if k in meta},
        _first_content(row),
    )


def turns_of(row: dict[str, Any]) -> Turns:
    """(question, answer) of each turn: a user message and the assistant's reply after it (""
    when there is none). A row with no user message has one empty turn."""
    turns: Turns = []
    for message in row.get("messages") or []:
        content = message.get("content") or ""
        if message.get("role") == "user":
            turns.append((content, ""))
        elif message.get("role") == "assistant" and turns and not turns[-1][1]:
            turns[-1] = (turns[-1][0], content)
    return turns or [("", "")]


def _in_turn(found: Found, number: int) -> Found:
    """A finding, with the turn it is in when that is not the first."""
    return found if number == 1 else {**found, "turn": number}


def _first_content(row: dict[str, Any]) -> str:
    """The first message's text: what the run's index of questions holds (questions_at)."""
    messages = row.get("messages") or []
    content = messages[0].get("content") if messages else None
    return content if isinstance(content, str) else ""


def build_filters(config: CurateConfig | SimpleNamespace) -> list[Filter]:
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


def _no_texts(seq: int) -> str:
    raise AssertionError("screening computes keys; it never compares texts")


# -- in a worker process -------------------------------------------------------------------------

_worker: Screener | None = None
_reader: RowReader | None = None


def start_worker(
    config: dict[str, Any], lsh: tuple[int, int] | None, reader: RowReader | None
) -> None:
    """A pool's initializer: the worker's Screener, from the config as a plain dict, and what it
    reads rows with."""
    global _worker, _reader
    _worker = Screener(SimpleNamespace(**config), lsh)
    _reader = reader


def screen_in_worker(task: Task) -> tuple[Rows, Screened]:
    assert _worker is not None
    return _worker.screen_task(task, _reader)
