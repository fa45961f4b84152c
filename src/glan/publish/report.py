"""``glan report``: one self-contained HTML page about a run's dataset.

What it shows: pairs per field and discipline (a treemap of the taxonomy, then a bar per
discipline split into basic and challenging), question and answer lengths, the basic/challenging
mix, how many of the syllabi's key concepts the questions used, what curation removed and why
(with examples), and tokens and cost per stage.

The page describes the dataset ``glan export`` would write: the curated set when curation has run,
else every pair. Plots are plotly figures with plotly.js inlined once, so the file opens with no
network (about 5 MB, most of it the library). Rows stream; per pair only two lengths are kept.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from glan.curation.errors import require
from glan.curation.runner import REASONS
from glan.run.curation import CuratedRows, CurationLog, CurationRun
from glan.run.ray_parts import refusal
from glan.run.store import DB_NAME, Store

REPORT_NAME = "report.html"
STAGE_ORDER = ("taxonomy", "subjects", "syllabus", "question", "answer")
TYPES = ("basic", "challenging")
_EXAMPLES = 5  # removals shown per reason
_EXCERPT = 220
_BINS = 60  # of the length histograms
_OPEN_UP_TO = 30  # disciplines: beyond this, the per-discipline bars start folded away
_COLORS = {"basic": "#4C78A8", "challenging": "#F58518"}
_FIELD_COLORS = [
    "#4C78A8",
    "#F58518",
    "#54A24B",
    "#E45756",
    "#72B7B2",
    "#B279A2",
    "#EECA3B",
    "#9D755D",
    "#FF9DA6",
    "#BAB0AC",
]
_REASON_TEXT = {
    "decontaminated": "shares a long n-gram with a benchmark item",
    "too_short": "empty or shorter than the minimum",
    "truncated": "cut off at max tokens",
    "refusal": "a refusal or an \u201cI don\u2019t know\u201d",
    "answer_leak": "the question gives its answer away",
    "wrong_language": "not in the expected language",
    "exact_duplicate": "same normalised question as a kept pair",
    "near_duplicate": "near-duplicate question (MinHash LSH, Jaccard checked)",
}


class ReportError(Exception):
    """The report cannot be made (no run directory, an unwritable output)."""


@dataclass
class Discipline:
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
class ReportData:
    run_dir: Path
    curation: CurationRun | None
    uncurated: int
    disciplines: dict[str, Discipline]
    question_chars: dict[str, array[int]]
    answer_chars: dict[str, array[int]]
    usage: dict[str, dict[str, int]]
    cost: dict[str, float] | None
    examples: dict[str, list[dict[str, Any]]]
    benchmark_hits: dict[str, int]

    @property
    def pairs(self) -> int:
        return sum(d.total for d in self.disciplines.values())

    def type_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for discipline in self.disciplines.values():
            counts.update(discipline.pairs)
        return counts


# -- gathering ----------------------------------------------------------------------------------


def gather(run_dir: Path) -> ReportData:
    store = Store.open(run_dir, readonly=True)
    try:
        if why := refusal(store, "glan report"):
            raise ReportError(why)
        rows = CuratedRows(store)
        disciplines: dict[str, Discipline] = {}
        _add_syllabi(store, disciplines)
        questions: dict[str, array[int]] = defaultdict(lambda: array("I"))
        answers: dict[str, array[int]] = defaultdict(lambda: array("I"))
        for row in rows:
            meta = row.get("meta") or {}
            discipline = _discipline(disciplines, meta)
            kind = str(meta.get("question_type") or "basic")
            discipline.pairs[kind] += 1
            for concept in meta.get("key_concepts") or []:
                discipline.used.add(_concept_key(meta.get("subject"), meta.get("level"), concept))
            messages = row.get("messages") or [{}, {}]
            questions[kind].append(len(str(messages[0].get("content") or "")))
            answers[kind].append(len(str(messages[-1].get("content") or "")))
        examples, hits = _removals(store, rows.curation)
        return ReportData(
            run_dir=run_dir,
            curation=rows.curation,
            uncurated=rows.uncurated,
            disciplines=disciplines,
            question_chars=dict(questions),
            answer_chars=dict(answers),
            usage=_ordered_stages(store.usage_by_stage()),
            cost=_cost(store),
            examples=examples,
            benchmark_hits=hits,
        )
    finally:
        store.close()


def _discipline(disciplines: dict[str, Discipline], meta: dict[str, Any]) -> Discipline:
    name = str(meta.get("discipline") or "(none)")
    if name not in disciplines:
        disciplines[name] = Discipline(
            str(meta.get("field") or "(none)"), str(meta.get("sub_field") or ""), name
        )
    return disciplines[name]


def _concept_key(subject: Any, level: Any, concept: Any) -> int:
    # hashed: a paper-scale run has millions of (subject, concept) pairs; ints are 1/4 the memory
    return hash((str(subject), str(level), str(concept)))


def _add_syllabi(store: Store, disciplines: dict[str, Discipline]) -> None:
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


def _cost(store: Store) -> dict[str, float] | None:
    """USD per stage from the price table, when this glan has one."""
    try:
        from glan.costs.prices import cost_by_stage
    except ImportError:
        return None
    try:
        return dict(cost_by_stage(store))
    except Exception:  # a broken price table must not cost the user the whole report
        return None


def _removals(
    store: Store, curation: CurationRun | None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    log = CurationLog.existing(store)
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
                    "question": _excerpt(_question(store, "out_seq", removal.out_seq)),
                    "original": _excerpt(_question(store, "id", original)) if original else None,
                    "matched": matched,
                }
            )
    return examples, log.matched_benchmarks(curation.id)


def _question(store: Store, column: str, value: Any) -> str:
    row = store.db.execute(
        f"SELECT json_extract(result, '$.messages[0].content') FROM nodes WHERE {column} = ?",
        (value,),
    ).fetchone()
    return str(row[0] or "") if row else ""


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "\u2026"


# -- figures ------------------------------------------------------------------------------------


class Figures:
    """Plotly figures as HTML fragments (plotly.js itself is inlined once by the page)."""

    def __init__(self) -> None:
        self.go = require("plotly.graph_objects", "report")
        self._count = 0

    def html(self, figure: Any, height: int = 380) -> str:
        self._count += 1
        figure.update_layout(
            height=height,
            margin={"l": 10, "r": 10, "t": 30, "b": 10},
            font={"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
            paper_bgcolor="rgba(0,0,0,0)",
            plot_bgcolor="rgba(0,0,0,0)",
            legend={"orientation": "h", "y": 1.08, "x": 0, "traceorder": "normal"},
        )
        fragment: str = figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{self._count}",
            # hover, click-to-zoom and legend toggles stay; the toolbar would cover legends
            config={"displayModeBar": False, "responsive": True},
        )
        return fragment

    def taxonomy(self, data: ReportData) -> str:
        """Field > sub-field > discipline, sized by pairs."""
        ids: list[str] = []
        labels: list[str] = []
        parents: list[str] = []
        values: list[int] = []
        totals: Counter[str] = Counter()
        for d in data.disciplines.values():
            totals[d.field] += d.total
            if d.sub_field:
                totals[f"{d.field}/{d.sub_field}"] += d.total
        for key, total in totals.items():
            if total == 0:
                continue
            head, _, tail = key.partition("/")
            ids.append(key)
            labels.append(tail or head)
            parents.append(head if tail else "")
            values.append(total)
        for d in data.disciplines.values():
            if d.total:
                parent = f"{d.field}/{d.sub_field}" if d.sub_field else d.field
                ids.append(f"{parent}/{d.name}")
                labels.append(d.name)
                parents.append(parent)
                values.append(d.total)
        figure = self.go.Figure(
            self.go.Treemap(
                ids=ids,
                labels=labels,
                parents=parents,
                values=values,
                branchvalues="total",
                textinfo="label+value",
                hovertemplate="<b>%{label}</b><br>%{value:,} pairs<br>%{percentRoot:.1%}"
                " of all<extra></extra>",
                tiling={"pad": 2},
                pathbar={"visible": True},
            )
        )
        figure.update_layout(treemapcolorway=_FIELD_COLORS)
        return self.html(figure, height=620)

    def per_discipline(self, data: ReportData) -> str:
        ordered = sorted(data.disciplines.values(), key=lambda d: d.total)
        names = [d.name for d in ordered]
        figure = self.go.Figure(
            [
                self.go.Bar(
                    y=names,
                    x=[d.pairs[kind] for d in ordered],
                    name=kind,
                    orientation="h",
                    marker_color=_COLORS[kind],
                    hovertemplate="%{y}: %{x:,} " + kind + "<extra></extra>",
                )
                for kind in TYPES
            ]
        )
        most = max((d.total for d in ordered), default=0)
        figure.update_layout(barmode="stack", xaxis_title="pairs", xaxis=_counts_axis(most))
        return self.html(figure, height=max(260, 80 + 20 * len(names)))

    def mix(self, data: ReportData) -> str:
        counts = data.type_counts()
        figure = self.go.Figure(
            self.go.Pie(
                labels=list(TYPES),
                values=[counts[kind] for kind in TYPES],
                hole=0.55,
                marker_colors=[_COLORS[kind] for kind in TYPES],
                sort=False,
                textinfo="label+percent",
            )
        )
        figure.update_layout(showlegend=False)
        return self.html(figure, height=300)

    def lengths(self, lengths: dict[str, array[int]], title: str) -> str:
        """A stacked histogram by question type; bins computed here, not by plotly, so the page
        holds 60 numbers per type instead of one per pair."""
        everything = sorted(v for values in lengths.values() for v in values)
        top = max(1, _percentile(everything, 99))
        width = top / _BINS
        centres = [width * (i + 0.5) for i in range(_BINS)]
        figure = self.go.Figure()
        for kind in TYPES:
            figure.add_bar(
                x=centres,
                y=_histogram(lengths.get(kind, array("I")), top),
                width=width,
                name=kind,
                marker_color=_COLORS[kind],
                hovertemplate="~%{x:.0f} chars: %{y:,}<extra>" + kind + "</extra>",
            )
        tallest = max(
            (sum(c) for c in zip(*(_histogram(v, top) for v in lengths.values()), strict=True)),
            default=0,
        )
        figure.update_layout(
            barmode="stack",
            bargap=0,
            xaxis_title=f"{title} (characters; the last bin holds the longest 1%)",
            yaxis_title="pairs",
            yaxis=_counts_axis(tallest),
        )
        return self.html(figure, height=320)

    def coverage(self, data: ReportData) -> str:
        rows = sorted(
            (d for d in data.disciplines.values() if d.coverage is not None),
            key=lambda d: d.coverage or 0.0,
        )
        figure = self.go.Figure(
            self.go.Bar(
                y=[d.name for d in rows],
                x=[100 * (d.coverage or 0.0) for d in rows],
                orientation="h",
                marker_color="#54A24B",
                customdata=[[len(d.used & d.concepts), len(d.concepts)] for d in rows],
                hovertemplate="%{y}: %{customdata[0]:,} of %{customdata[1]:,} key concepts"
                " (%{x:.1f}%)<extra></extra>",
            )
        )
        figure.update_layout(
            xaxis_title="key concepts asked about",
            xaxis={"range": [0, 102], "ticksuffix": "%", "dtick": 20},
        )
        return self.html(figure, height=max(220, 80 + 20 * len(rows)))

    def reasons(self, counts: dict[str, int]) -> str:
        ordered = [reason for reason in REASONS if counts.get(reason)]
        figure = self.go.Figure(
            self.go.Bar(
                y=ordered[::-1],
                x=[counts[r] for r in ordered[::-1]],
                orientation="h",
                marker_color="#E45756",
                hovertemplate="%{y}: %{x:,} pairs<extra></extra>",
            )
        )
        figure.update_layout(
            xaxis_title="pairs removed", xaxis=_counts_axis(max(counts.values(), default=0))
        )
        return self.html(figure, height=max(200, 70 + 34 * len(ordered)))

    def tokens(self, usage: dict[str, dict[str, int]]) -> str:
        stages = list(usage)
        figure = self.go.Figure(
            [
                self.go.Bar(
                    x=stages,
                    y=[usage[s][key] for s in stages],
                    name=label,
                    marker_color=color,
                    hovertemplate="%{x}: %{y:,} " + label + "<extra></extra>",
                )
                for key, label, color in (
                    ("tokens_in", "tokens in", "#72B7B2"),
                    ("tokens_out", "tokens out", "#B279A2"),
                )
            ]
        )
        figure.update_layout(barmode="group", yaxis_title="tokens")
        return self.html(figure, height=320)


# -- the page -----------------------------------------------------------------------------------


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run directory; returns its path (default RUN/report.html)."""
    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise ReportError(f"{run_dir} is not a glan run directory (no {DB_NAME} in it)")
    target = Path(out) if out is not None else run_dir / REPORT_NAME
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


def _counts_axis(most: int) -> dict[str, Any]:
    """Whole numbers on an axis of counts (plotly would tick 0.2, 0.4 ... for small ones)."""
    return {"dtick": 1, "tick0": 0} if most <= 8 else {"tickformat": ",d"}


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
                    "p5": _percentile(merged, 5),
                    "median": _percentile(merged, 50),
                    "p95": _percentile(merged, 95),
                    "max": merged[-1],
                }
            )
    return stats


def _percentile(ordered: list[int], percent: float) -> int:
    """The nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


def _histogram(values: array[int], top: int) -> list[int]:
    """Counts in ``_BINS`` equal bins over [0, top]; longer values fall in the last bin."""
    counts = [0] * _BINS
    for value in values:
        counts[min(_BINS - 1, value * _BINS // top)] += 1
    return counts


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
