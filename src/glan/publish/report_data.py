"""What the report shows, gathered in one pass over a run's (curated) rows."""

from __future__ import annotations

import heapq
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glan.costs.prices import spend_by_stage
from glan.loop.eval import EvalResult, every_result
from glan.publish.coverage import SubjectCoverage, coverage
from glan.run import Run, open_run
from glan.run.curation import CuratedRows, CurationLog, CurationRun
from glan.stages.review import reviews

STAGE_ORDER = ("taxonomy", "subjects", "syllabus", "question", "answer", "followup", "reply")
_EXAMPLES = 5  # removals shown per reason
_EXCERPT = 220


@dataclass
class DisciplineTally:
    field: str
    sub_field: str
    name: str
    pairs: Counter[str] = field(default_factory=Counter)  # by question type
    subjects: int = 0
    concepts: set[int] = field(default_factory=set)  # the syllabi's key concepts (hashed)
    used: set[int] = field(default_factory=set)  # the ones questions were asked about

    @property
    def total(self) -> int:
        return sum(self.pairs.values())

    @property
    def coverage(self) -> float | None:
        return len(self.used & self.concepts) / len(self.concepts) if self.concepts else None


@dataclass
class ReviewTally:
    """What glan judge found in one discipline (or in all)."""

    field: str
    name: str
    scores: list[int] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)  # of samples agreeing, where scored
    low: int = 0  # judged below 5
    contradicted: int = 0
    open_ended: int = 0  # no single final answer

    @property
    def mean_score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    @property
    def mean_share(self) -> float | None:
        return sum(self.shares) / len(self.shares) if self.shares else None


@dataclass
class ReportData:
    run_dir: Path
    curation: CurationRun | None
    uncurated: int
    disciplines: dict[str, DisciplineTally]
    question_chars: dict[str, array[int]]
    answer_chars: dict[str, array[int]]
    usage: dict[str, dict[str, int]]
    cost: dict[str, float] | None
    examples: dict[str, list[dict[str, Any]]]
    benchmark_hits: dict[str, int]
    review: dict[str, ReviewTally] = field(default_factory=dict)  # by discipline, every pair
    lowest: list[dict[str, Any]] = field(default_factory=list)  # the lowest-scored pairs
    subjects: list[SubjectCoverage] = field(default_factory=list)  # sessions, concepts used
    evals: list[EvalResult] = field(default_factory=list)  # GLAN-Test comparisons (glan eval)
    turns: Counter[int] = field(default_factory=Counter)  # rows by user turns
    followup_kinds: Counter[str] = field(default_factory=Counter)  # every follow-up, by kind

    @property
    def pairs(self) -> int:
        return sum(d.total for d in self.disciplines.values())

    def type_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for discipline in self.disciplines.values():
            counts.update(discipline.pairs)
        return counts


# -- gathering ----------------------------------------------------------------------------------


def gather(run_dir: str | Path) -> ReportData:
    run = open_run(run_dir)
    try:
        rows = CuratedRows(run)
        disciplines: dict[str, DisciplineTally] = {}
        _add_syllabi(run.store, disciplines)
        questions: dict[str, array[int]] = defaultdict(lambda: array("I"))
        answers: dict[str, array[int]] = defaultdict(lambda: array("I"))
        turns: Counter[int] = Counter()
        followups: Counter[str] = Counter()
        for row in rows:
            meta = row.get("meta") or {}
            discipline = _discipline(disciplines, meta)
            kind = str(meta.get("question_type") or "basic")
            discipline.pairs[kind] += 1
            for concept in meta.get("key_concepts") or []:
                discipline.used.add(_concept_key(meta.get("subject"), meta.get("level"), concept))
            messages = row.get("messages") or [{}, {}]
            # of a conversation, the first turn: the question and its answer
            questions[kind].append(len(str(messages[0].get("content") or "")))
            answers[kind].append(len(str(messages[min(1, len(messages) - 1)].get("content") or "")))
            turns[int(meta.get("turns") or 1)] += 1
            followups.update(str(k) for k in meta.get("followup_kinds") or [])
        examples, hits = _removals(run, rows.curation)
        spent = spend_by_stage(run.usage())
        return ReportData(
            run_dir=Path(run_dir),
            curation=rows.curation,
            uncurated=rows.uncurated,
            disciplines=disciplines,
            question_chars=dict(questions),
            answer_chars=dict(answers),
            usage=_ordered_stages(
                {
                    stage: {
                        "calls": s.calls,
                        "tokens_in": s.tokens_in,
                        "tokens_cached": s.tokens_cached,
                        "tokens_out": s.tokens_out,
                    }
                    for stage, s in spent.items()
                }
            ),
            cost={stage: s.cost for stage, s in spent.items()},
            examples=examples,
            benchmark_hits=hits,
            **_review(run.store),
            subjects=coverage(run),
            evals=every_result(run),
            turns=turns,
            followup_kinds=followups,
        )
    finally:
        run.close()


def _discipline(disciplines: dict[str, DisciplineTally], meta: dict[str, Any]) -> DisciplineTally:
    name = str(meta.get("discipline") or "(none)")
    if name not in disciplines:
        disciplines[name] = DisciplineTally(
            str(meta.get("field") or "(none)"), str(meta.get("sub_field") or ""), name
        )
    return disciplines[name]


def _concept_key(subject: Any, level: Any, concept: Any) -> int:
    # hashed: a paper-scale run has millions of (subject, concept) pairs; ints are 1/4 the memory
    return hash((str(subject), str(level), str(concept)))


def _add_syllabi(store: Any, disciplines: dict[str, DisciplineTally]) -> None:
    for subject in store.nodes("subject", "done"):
        discipline = _discipline(disciplines, subject.data)
        discipline.subjects += 1
        for session in (subject.result or {}).get("sessions") or []:
            for concept in session.get("key_concepts") or []:
                key = _concept_key(subject.data.get("subject"), subject.data.get("level"), concept)
                discipline.concepts.add(key)


def _ordered_stages(usage: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    known = [stage for stage in STAGE_ORDER if stage in usage]
    return {stage: usage[stage] for stage in known + sorted(set(usage) - set(known))}


def _removals(
    run: Run, curation: CurationRun | None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    log = CurationLog.existing(run.store)
    if curation is None or log is None:
        return {}, {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for reason in curation.counts:
        examples[reason] = []
        for removal in log.removals(curation.id, reason, limit=_EXAMPLES):
            matched = dict(removal.matched)
            original = matched.get("duplicate_of")
            examples[reason].append(
                {
                    "id": removal.row_id,
                    "question": _excerpt(run.question(removal.out_seq)),
                    "original": _excerpt(run.question_of(original)) if original else None,
                    "matched": matched,
                }
            )
    return examples, log.matched_benchmarks(curation.id)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "\u2026"


def _review(store: Any) -> dict[str, Any]:
    """The review of every generated pair (curated or not: the weak ones are the point), per
    discipline, and the lowest-scored pairs with the judge's reasons."""
    found = reviews(store)
    tallies: dict[str, ReviewTally] = {}
    for review in found.values():
        name = review.discipline or "(none)"
        tally = tallies.setdefault(name, ReviewTally(review.field or "(none)", name))
        if review.score is not None:
            tally.scores.append(review.score)
            tally.low += review.score < 5
        agreement = review.agreement
        if agreement is not None:
            tally.contradicted += agreement.contradicted
            tally.open_ended += not agreement.single
            if agreement.share is not None:
                tally.shares.append(agreement.share)
    scored = [(r.score, row_id) for row_id, r in found.items() if r.score is not None]
    lowest = {row_id for _, row_id in heapq.nsmallest(_EXAMPLES, scored)}
    examples = [
        {
            "id": item.data["row_id"],
            "discipline": item.data.get("discipline"),
            "score": item.result["overall"],
            "reason": item.result["reason"],
            "question": _excerpt(item.data["messages"][0]["content"]),
        }
        for item in store.nodes("judgement", "done")
        if item.data["row_id"] in lowest
        and found[item.data["row_id"]].score == item.result["overall"]
    ]
    examples.sort(key=lambda e: e["score"])
    return {"review": tallies, "lowest": examples[:_EXAMPLES]}
