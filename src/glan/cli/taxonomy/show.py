"""``glan taxonomy show`` and ``glan taxonomy validate``: the tree as it stands, and what is wrong
with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.tree import Tree

from glan.cli.common import err, out, plural, require_run, user_errors
from glan.cli.taxonomy import FileArg
from glan.run.store import Store
from glan.taxonomy import Taxonomy, TaxonomyNode
from glan.taxonomy.check import check_file

NodePath = tuple[str, ...]


def show_command(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A taxonomy YAML file. \\[default: the bundled one]", show_default=False
        ),
    ] = None,
    depth: Annotated[
        int | None, typer.Option(help="Show this many levels. \\[default: all]")
    ] = None,
    votes: Annotated[bool, typer.Option("--votes", help="Show each reviewer's vote.")] = False,
    run: Annotated[
        Path | None,
        typer.Option(help="A run directory: show each discipline's rows there, and which are new."),
    ] = None,
) -> None:
    """The tree, with counts and review state."""
    with user_errors():
        taxonomy = Taxonomy.load(file)
        rows = _run_rows(run) if run is not None else None
    out.print(
        f"[bold]{escape(str(file) if file else 'bundled taxonomy')}[/bold]: {_summary(taxonomy)}"
    )
    out.print(_TreeView(taxonomy, rows, depth, votes).tree())


class _TreeView:
    """The taxonomy as a rich tree: dropped branches struck through, disciplines counted under
    each inner node, review state (and votes), and a run's rows per discipline."""

    def __init__(
        self, taxonomy: Taxonomy, rows: dict[str, int] | None, depth: int | None, votes: bool
    ) -> None:
        disciplines = taxonomy.disciplines()
        self.taxonomy, self.rows, self.depth, self.votes = taxonomy, rows, depth, votes
        self.live = {d.path[:k] for d in disciplines for k in range(1, len(d.path) + 1)}
        self.below: dict[NodePath, int] = {}
        for d in disciplines:
            for k in range(1, len(d.path)):
                self.below[d.path[:k]] = self.below.get(d.path[:k], 0) + 1
        self.ids = {d.path: d.id for d in disciplines}

    def tree(self) -> Tree:
        tree = Tree("[dim]fields[/dim]", hide_root=True)
        self._add(tree, self.taxonomy.fields, (), False)
        return tree

    def _add(
        self, branch: Tree, nodes: list[TaxonomyNode], parent: NodePath, dropped: bool
    ) -> None:
        for node in nodes:
            path = (*parent, node.name)
            gone = dropped or node.state == "dropped"
            child = branch.add(self._label(node, path, gone))
            if node.children and (self.depth is None or len(path) < self.depth):
                self._add(child, node.children, path, gone)

    def _label(self, node: TaxonomyNode, path: NodePath, gone: bool) -> str:
        label = escape(node.name)
        label = f"[strike dim]{label}[/strike dim]" if gone else label
        if not node.is_leaf:
            label = f"[bold]{label}[/bold]" if not gone else label
            label += f" [dim]({self.below.get(path, 0)})[/dim]" if path in self.live else ""
        label += _state(node, self.votes)
        if self.rows is not None and path in self.ids:
            count = self.rows.get(self.ids[path])
            label += f" [cyan]{count:,} rows[/cyan]" if count else " [magenta]new[/magenta]"
        return label


def _summary(taxonomy: Taxonomy) -> str:
    disciplines = taxonomy.disciplines()
    fields = {d.path[0] for d in disciplines}
    inner = {d.path[:k] for d in disciplines for k in range(2, len(d.path))}
    dropped = sum(1 for _, node, _ in taxonomy.walk() if node.state == "dropped")
    waiting = len(taxonomy.unreviewed())
    reviewers = sorted(
        {r for _, node, _ in taxonomy.walk() if node.review is not None for r in node.review.votes}
    )
    parts = [
        plural(len(fields), "field"),
        plural(len(inner), "sub-field"),
        plural(len(disciplines), "discipline"),
    ]
    if waiting:
        parts.append(f"[yellow]{waiting} unreviewed[/yellow]")
    if dropped:
        parts.append(f"[red]{dropped} dropped[/red]")
    if reviewers:
        parts.append("reviewers: " + ", ".join(escape(r) for r in reviewers))
    return " · ".join(parts)


def _state(node: TaxonomyNode, votes: bool) -> str:
    if node.review is None:
        return ""
    colour = {"unreviewed": "yellow", "kept": "green", "dropped": "red"}[node.review.state]
    text = f" [{colour}]{node.review.state}[/{colour}]"
    ballots = node.review.votes
    if ballots and votes:
        text += " [dim]" + escape(", ".join(f"{r}: {v}" for r, v in ballots.items())) + "[/dim]"
    elif ballots:
        keeps = sum(v == "keep" for v in ballots.values())
        text += f" [dim]{keeps} keep / {len(ballots) - keeps} drop[/dim]"
    return text


def _run_rows(run: Path) -> dict[str, int]:
    require_run(run)
    store = Store.open(run, readonly=True)
    try:
        return store.rows_by_root()
    finally:
        store.close()


def validate_command(
    file: FileArg,
    allow_unreviewed: Annotated[
        bool,
        typer.Option("--allow-unreviewed", help="Unreviewed nodes are a warning, not an error."),
    ] = False,
) -> None:
    """Check a taxonomy file: its format, repeated names, empty branches and review state.

    Every problem is listed with the path of its node. Exit status 1 when there is an error
    (glan generate would refuse the file), 0 otherwise, warnings included.
    """
    report = check_file(file, allow_unreviewed=allow_unreviewed)
    for finding in report.findings:
        colour = "red" if finding.level == "error" else "yellow"
        label = f"[{colour}]{finding.level}:[/{colour}]"
        out.print(f"{label} {escape(finding.message)}", soft_wrap=True)
    errors = sum(f.count for f in report.errors)
    warnings = sum(f.count for f in report.warnings)
    if report.taxonomy is not None:
        out.print(f"{file}: {_summary(report.taxonomy)}")
    if errors:
        err.print(
            f"[red]{file}: {plural(errors, 'error')}[/red]"
            + (f", {plural(warnings, 'warning')}" if warnings else "")
        )
        raise typer.Exit(1)
    out.print(f"{file}: ok" + (f" ({plural(warnings, 'warning')})" if warnings else ""))
