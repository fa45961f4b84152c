"""``glan taxonomy validate``: everything wrong or doubtful in a taxonomy file, with node paths.

Errors stop ``glan generate``: a file that does not load (bad YAML, unknown keys, sibling names
that clash, ``children: []``, every discipline dropped, ...) and, unless unreviewed nodes are
allowed, nodes nobody has reviewed yet. Warnings are worth a look but do not stop a run: votes
that ``merge`` has not applied yet, branches whose nodes are all dropped, and the same discipline
name in two places (generated twice, under two ids).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from glan.stages.subjects import normalise
from glan.taxonomy.edit import NodePath, fmt
from glan.taxonomy.model import Taxonomy, TaxonomyError
from glan.taxonomy.review import preview_merge


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    message: str  # starts with the node's path when there is one
    count: int = 1  # problems it stands for ("and 40 more unreviewed nodes")

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class Report:
    source: str
    taxonomy: Taxonomy | None
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def check_file(path: Path, *, allow_unreviewed: bool = False, limit: int | None = 10) -> Report:
    source = str(path)
    try:
        taxonomy = Taxonomy.load(path)
    except TaxonomyError as error:
        problems = error.problems if len(error.problems) > 1 else [str(error)]
        return Report(source, None, [Finding("error", p) for p in problems])
    return Report(source, taxonomy, check(taxonomy, allow_unreviewed=allow_unreviewed, limit=limit))


def check(
    taxonomy: Taxonomy, *, allow_unreviewed: bool = False, limit: int | None = 10
) -> list[Finding]:
    """The findings on a taxonomy that loads (so its structure is already valid); at most
    ``limit`` unreviewed nodes are named one by one."""
    findings: list[Finding] = []
    pending = preview_merge(taxonomy)
    unmerged = set(pending.changed)
    level: Literal["error", "warning"] = "warning" if allow_unreviewed else "error"
    waiting = taxonomy.unreviewed()
    for path in waiting[:limit]:
        node_votes = _votes(taxonomy, path)
        if path in unmerged:
            findings.append(
                Finding(
                    level,
                    f"{fmt(path)}: unreviewed; its votes ({node_votes}) are not applied yet:"
                    " run glan taxonomy merge",
                )
            )
        else:
            why = f"votes so far: {node_votes}" if node_votes else "nobody has voted on it"
            findings.append(Finding(level, f"{fmt(path)}: unreviewed ({why})"))
    if limit is not None and len(waiting) > limit:
        findings.append(
            Finding(
                level,
                f"and {len(waiting) - limit} more unreviewed nodes"
                " (glan taxonomy show FILE marks them all)",
                len(waiting) - limit,
            )
        )
    states = {path: node.state for path, node, _ in taxonomy.walk()}
    for path in pending.changed:
        if states[path] != "unreviewed":
            after = "dropped" if path in set(pending.dropped) else "kept"
            findings.append(
                Finding(
                    "warning",
                    f"{fmt(path)}: state is {states[path]} but the votes ({_votes(taxonomy, path)})"
                    f" say {after}: run glan taxonomy merge",
                )
            )
    findings += _empty_branches(taxonomy)
    findings += _repeated_disciplines(taxonomy)
    return findings


def _votes(taxonomy: Taxonomy, path: NodePath) -> str:
    for here, node, _ in taxonomy.walk():
        if here == path and node.review is not None:
            return ", ".join(f"{r}: {v}" for r, v in node.review.votes.items())
    return ""


def _empty_branches(taxonomy: Taxonomy) -> list[Finding]:
    live = {d.path[:k] for d in taxonomy.disciplines() for k in range(1, len(d.path) + 1)}
    findings = []
    reported: list[NodePath] = []
    for path, node, dropped in taxonomy.walk():
        if dropped or node.is_leaf or path in live:
            continue
        if any(path[: len(r)] == r for r in reported):
            continue
        reported.append(path)
        findings.append(
            Finding(
                "warning",
                f"{fmt(path)}: every node below it is dropped, so this branch has no disciplines"
                " (drop it too, or keep something below it)",
            )
        )
    return findings


def _repeated_disciplines(taxonomy: Taxonomy) -> list[Finding]:
    places: dict[str, list[NodePath]] = defaultdict(list)
    for discipline in taxonomy.disciplines():
        places[normalise(discipline.name)].append(discipline.path)
    return [
        Finding(
            "warning",
            f"'{paths[0][-1]}' is a discipline in {len(paths)} places ("
            + "; ".join(fmt(p) for p in paths)
            + "): each is generated, under its own id; remove or rename one if they are the same",
        )
        for paths in places.values()
        if len(paths) > 1
    ]
