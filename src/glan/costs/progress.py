"""Run statistics and how they are shown: a live display on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from glan.costs.prices import PriceTable
from glan.llm.types import ChatResponse

# Stage name -> label, in pipeline order.
LABELS = {
    "subjects": "subjects",
    "syllabus": "syllabi",
    "question": "questions",
    "answer": "answers",
    "followup": "follow-ups",
    "reply": "replies",
}
TURN_STAGES = ("followup", "reply")  # only conversations (--turns > 1) have these


@dataclass
class StageStats:
    total: int = 0
    done: int = 0
    failed: int = 0
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    tokens_cached: int = 0  # of tokens_in, read from the provider's prefix cache


@dataclass
class RunStats:
    prices: PriceTable = field(default_factory=PriceTable)
    questions_per_syllabus: int = 0
    turns: int = 1
    stages: dict[str, StageStats] = field(
        default_factory=lambda: {name: StageStats() for name in LABELS}
    )
    started: float = field(default_factory=time.monotonic)

    def record(self, stage: str, model: str, response: ChatResponse) -> None:
        """A paid-for reply arrived."""
        self.add_usage(
            stage,
            model,
            response.prompt_tokens,
            response.completion_tokens,
            response.batch,
            cached=response.cached_tokens,
        )

    def add_usage(
        self,
        stage: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        batch: bool = False,
        requests: int = 1,
        cached: int = 0,
    ) -> None:
        stats = self.stages[stage]
        stats.requests += requests
        stats.tokens_in += tokens_in
        stats.tokens_out += tokens_out
        stats.tokens_cached += cached
        stats.cost += self.prices.cost(model, tokens_in, tokens_out, batch, cached) or 0.0

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.stages.values())

    def projected_totals(self) -> dict[str, int]:
        """Totals as they will be: items of a stage appear only as their parents finish, so a
        stage is at least as big as what its known parents will give it."""
        s = self.stages
        totals = {name: stats.total for name, stats in s.items()}
        if {"syllabus", "question", "answer"} <= s.keys():
            questions = max(s["question"].total, s["syllabus"].total * self.questions_per_syllabus)
            answers = max(s["answer"].total, questions)
            totals.update(question=questions, answer=answers)
            if {"followup", "reply"} <= s.keys():
                # each answer opens a conversation of turns - 1 follow-ups, each with a reply
                followups = max(s["followup"].total, answers * (self.turns - 1))
                totals.update(followup=followups, reply=max(s["reply"].total, followups))
        return totals

    def shown(self) -> list[str]:
        """The stages a display shows: a single-turn run has no follow-ups or replies."""
        return [name for name in self.stages if self.turns > 1 or name not in TURN_STAGES]

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.stages.values())

    @property
    def tokens(self) -> tuple[int, int]:
        return (
            sum(s.tokens_in for s in self.stages.values()),
            sum(s.tokens_out for s in self.stages.values()),
        )

    @property
    def cached_share(self) -> float:
        """The share of prompt tokens the provider read from its prefix cache."""
        tokens_in = self.tokens[0]
        return sum(s.tokens_cached for s in self.stages.values()) / tokens_in if tokens_in else 0


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:7.1f}/s")


class LiveProgress:
    """A bar per stage (done/total, rate, tokens, failures, ETA) while the run goes."""

    def __init__(self, stats: RunStats, console: Console | None = None) -> None:
        self.stats = stats
        self.progress = Progress(
            TextColumn("[bold]{task.description:>10}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TextColumn("[red]{task.fields[failed]}"),
            TextColumn("[dim]{task.fields[tokens]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            refresh_per_second=4,
            speed_estimate_period=10,
        )
        self.tasks: dict[str, TaskID] = {}

    def start(self) -> None:
        for name in self.stats.shown():
            label = LABELS.get(name, name)
            self.tasks[name] = self.progress.add_task(label, total=None, failed="", tokens="")
        self.progress.start()

    def refresh(self) -> None:
        totals = self.stats.projected_totals()
        for name in self.stats.shown():
            stats = self.stats.stages[name]
            self.progress.update(
                self.tasks[name],
                total=totals[name] or None,
                completed=stats.done,
                failed=f"{stats.failed} failed" if stats.failed else "",
                tokens=f"{_short(stats.tokens_in)}→{_short(stats.tokens_out)} tok"
                + (f" ${stats.cost:,.2f}" if stats.cost else ""),
            )

    def stop(self) -> None:
        self.refresh()
        self.progress.stop()


class LogProgress:
    """One plain line every ``every`` seconds, for logs and CI."""

    def __init__(self, stats: RunStats, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.stats = stats
        self.stream = stream or sys.stderr
        self.every = every
        self._next = time.monotonic() + every

    def start(self) -> None:
        pass

    def refresh(self) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every
            self.line()

    def line(self) -> None:
        parts = []
        totals = self.stats.projected_totals()
        for name in self.stats.shown():
            stats = self.stats.stages[name]
            failed = f" ({stats.failed} failed)" if stats.failed else ""
            parts.append(f"{LABELS.get(name, name)} {stats.done}/{totals[name]}{failed}")
        tokens_in, tokens_out = self.stats.tokens
        elapsed = time.monotonic() - self.stats.started
        cached = self.stats.cached_share
        cached_note = f" ({cached:.0%} cached)" if cached else ""
        print(
            f"[glan {elapsed:7.0f}s] {' | '.join(parts)} | {self.stats.requests} requests,"
            f" {_short(tokens_in)} tokens in{cached_note}, {_short(tokens_out)} out,"
            f" ${self.stats.cost:,.2f}",
            file=self.stream,
            flush=True,
        )

    def stop(self) -> None:
        self.line()


class NoProgress:
    def start(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _short(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


ProgressMode = Literal["auto", "live", "log", "none"]


def display_for(mode: ProgressMode, stats: RunStats) -> LiveProgress | LogProgress | NoProgress:
    """The progress display a run asked for; "auto": live on a terminal, log lines elsewhere."""
    if mode == "auto":
        mode = "live" if sys.stderr.isatty() else "log"
    if mode == "live":
        return LiveProgress(stats)
    if mode == "log":
        return LogProgress(stats)
    return NoProgress()
