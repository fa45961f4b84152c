"""``glan report``: one self-contained HTML page about a run's dataset.

What it shows: pairs per field and discipline (a treemap of the taxonomy, then a bar per
discipline split into basic and challenging), question and answer lengths, the basic/challenging
mix, for conversations (``--turns``) the turns per conversation and the follow-up mix, how many of
the syllabi's key concepts the questions used, what curation removed and why
(with examples), and tokens and cost per stage.

The page describes the dataset ``glan export`` would write: the curated set when curation has run,
else every pair. Plots are plotly figures with plotly.js inlined once, so the file opens with no
network (about 5 MB, most of it the library). Rows stream; per pair only two lengths are kept.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from glan.curation.errors import require
from glan.curation.runner import REASONS
from glan.publish.figures import Figures, percentile
from glan.publish.report_data import ReportData, gather
from glan.run import is_run
from glan.run.store import DB_NAME

REPORT_NAME = "report.html"
_OPEN_UP_TO = 30  # disciplines: beyond this, the per-discipline bars start folded away
_REASON_TEXT = {
    "decontaminated": "shares a long n-gram with a benchmark item",
    "too_short": "empty or shorter than the minimum",
    "truncated": "cut off at max tokens",
    "refusal": "a refusal or an \u201cI don\u2019t know\u201d",
    "answer_leak": "the question gives its answer away",
    "wrong_language": "not in the expected language",
    "exact_duplicate": "same normalised question as a kept pair",
    "near_duplicate": "near-duplicate question (MinHash LSH, Jaccard checked)",
    "low_score": "the judge scored it below --min-score",
    "contradicted": "most extra answers reach another final answer",
}


_FOLLOWUP_TEXT = {
    "clarify": "a step of the reply explained",
    "variant": "the problem again with changed data",
    "next_step": "the next step",
    "later_session": "how it links to a later session",
    "check_attempt": "the student's own attempt checked",
}


class ReportError(Exception):
    """The report cannot be made (no run directory, an unwritable output)."""


# -- the page -----------------------------------------------------------------------------------


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run directory; returns its path (default RUN/report.html)."""
    if not is_run(run_dir):
        raise ReportError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    if out is None and "://" in str(run_dir):
        raise ReportError(f"a report of {run_dir} needs --out FILE, a local path")
    target = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    figures = Figures()  # fails early, naming the extra, when plotly is missing
    page = render(gather(run_dir), figures)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write {target}: {error.strerror or error}") from None
    return target


def render(data: ReportData, figures: Figures) -> str:
    plotly_offline = require("plotly.offline", "report")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(
        resources.files("glan").joinpath("publish/templates/report.html.j2").read_text("utf-8")
    )
    has_pairs = data.pairs > 0
    counts = data.type_counts()
    concepts = sum(len(d.concepts) for d in data.disciplines.values())
    used = sum(len(d.used & d.concepts) for d in data.disciplines.values())
    shown = sum(1 for d in data.disciplines.values() if d.total)
    tokens_in = sum(u["tokens_in"] for u in data.usage.values())
    tokens_out = sum(u["tokens_out"] for u in data.usage.values())
    tokens_cached = sum(u.get("tokens_cached", 0) for u in data.usage.values())
    return template.render(
        title=f"glan report: {data.run_dir.name or data.run_dir}",
        run_dir=str(data.run_dir),
        generated_at=time.strftime("%Y-%m-%d %H:%M"),
        plotly_js=jinja2.utils.markupsafe.Markup(plotly_offline.get_plotlyjs()),
        data=data,
        curation=data.curation,
        curated_at=_when(data.curation.finished_at) if data.curation else None,
        pairs=data.pairs,
        counts=counts,
        concepts=concepts,
        used=used,
        subjects=sum(d.subjects for d in data.disciplines.values()),
        disciplines=sorted(data.disciplines.values(), key=lambda d: (d.field, d.sub_field, d.name)),
        fields=len({d.field for d in data.disciplines.values() if d.total}),
        shown=shown,
        many=shown > _OPEN_UP_TO,
        spread=_spread(data),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        tokens_cached=tokens_cached,
        total_cost=sum(data.cost.values()) if data.cost is not None else None,
        reasons=[r for r in REASONS if data.curation and data.curation.counts.get(r)],
        reason_text=_REASON_TEXT,
        lengths=_length_stats(data),
        figure_taxonomy=_markup(figures.taxonomy(data)) if has_pairs else None,
        figure_disciplines=_markup(figures.per_discipline(data)) if has_pairs else None,
        figure_mix=_markup(figures.mix(data)) if has_pairs else None,
        figure_questions=(
            _markup(figures.lengths(data.question_chars, "question length")) if has_pairs else None
        ),
        figure_answers=(
            _markup(figures.lengths(data.answer_chars, "answer length")) if has_pairs else None
        ),
        figure_coverage=_markup(figures.coverage(data)) if concepts else None,
        figure_reasons=(
            _markup(figures.reasons(data.curation.counts))
            if data.curation and data.curation.counts
            else None
        ),
        figure_tokens=_markup(figures.tokens(data.usage)) if data.usage else None,
        matched=_matched_text,
        review=sorted(data.review.values(), key=lambda r: (r.mean_score or 11, r.name)),
        conversations=sum(n for turns, n in data.turns.items() if turns > 1),
        turn_counts=sorted(data.turns.items()),
        followup_mix=data.followup_kinds.most_common(),
        followups=sum(data.followup_kinds.values()),
        followup_text=_FOLLOWUP_TEXT,
    )


def _spread(data: ReportData) -> dict[str, Any] | None:
    """The disciplines with the lowest and highest key-concept coverage, and the median."""
    ranked = sorted(
        (d for d in data.disciplines.values() if d.coverage is not None),
        key=lambda d: d.coverage or 0.0,
    )
    if len(ranked) < 3:
        return None
    middle = ranked[len(ranked) // 2].coverage
    return {"low": ranked[0], "high": ranked[-1], "median": middle}


def _markup(fragment: str) -> Any:
    return jinja2.utils.markupsafe.Markup(fragment)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _length_stats(data: ReportData) -> list[dict[str, Any]]:
    stats = []
    for label, lengths in (("question", data.question_chars), ("answer", data.answer_chars)):
        merged = sorted(v for values in lengths.values() for v in values)
        if merged:
            stats.append(
                {
                    "part": label,
                    "p5": percentile(merged, 5),
                    "median": percentile(merged, 50),
                    "p95": percentile(merged, 95),
                    "max": merged[-1],
                }
            )
    return stats


def _matched_text(reason: str, matched: dict[str, Any]) -> str:
    """What a removal matched, as one line of text (the template escapes it)."""
    if reason == "decontaminated":
        where = f"{matched.get('benchmark')} item {matched.get('item')}"
        if matched.get("split"):
            where += f" ({matched['split']})"
        return f"{where}: \u201c{matched.get('ngram', '')}\u201d"
    if reason in ("exact_duplicate", "near_duplicate"):
        text = f"duplicate of {matched.get('duplicate_of')}"
        if "jaccard" in matched:
            text += f", Jaccard {matched['jaccard']:.2f}"
        return text
    return ", ".join(f"{key}: {value}" for key, value in matched.items())
