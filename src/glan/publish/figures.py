"""The report's plots (plotly), each rendered to an HTML fragment."""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Any

from glan.curation.errors import require
from glan.curation.runner import REASONS
from glan.publish.report_data import ReportData

TYPES = ("basic", "challenging")
BINS = 60  # of the length histograms
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
        top = max(1, percentile(everything, 99))
        width = top / BINS
        centres = [width * (i + 0.5) for i in range(BINS)]
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


def _counts_axis(most: int) -> dict[str, Any]:
    """Whole numbers on an axis of counts (plotly would tick 0.2, 0.4 ... for small ones)."""
    return {"dtick": 1, "tick0": 0} if most <= 8 else {"tickformat": ",d"}


def _histogram(values: array[int], top: int) -> list[int]:
    """Counts in ``BINS`` equal bins over [0, top]; longer values fall in the last bin."""
    counts = [0] * BINS
    for value in values:
        counts[min(BINS - 1, value * BINS // top)] += 1
    return counts


def percentile(ordered: list[int], percent: float) -> int:
    """The nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]
