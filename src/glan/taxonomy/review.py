"""Human review of a drafted taxonomy: votes per reviewer, then the majority decides (paper 2.1).

Each reviewer votes keep or drop on nodes; the votes are kept in the file under each node's
``review.votes`` (reviewer name -> keep | drop), so the same step works for one person and for a
team, in the terminal (``ReviewSession``) or in an editor. ``merge_votes`` then sets every voted
node's state from the majority of its votes:

- dropping a node drops its subtree: a reviewer's drop vote on a node also counts as their drop
  vote on every node below it, unless they voted on that node themselves;
- a tie keeps the node (dropping takes a majority);
- a node with fewer than ``min_votes`` votes keeps its state (unreviewed nodes stay unreviewed);
- a node without ``review`` was written by a person: it is kept and nobody needs to vote on it.

Renames and additions made while reviewing apply to the file at once; they are not voted on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.markup import escape

from glan.taxonomy.edit import (
    NodePath,
    add_node,
    edit_file,
    fmt,
    node_at,
    read,
    rename_node,
)
from glan.taxonomy.model import Review, Taxonomy, TaxonomyError, TaxonomyNode, Vote

# ------------------------------------------------------------------------------------- votes


def vote(taxonomy: Taxonomy, path: NodePath, reviewer: str, choice: Vote) -> None:
    """Record ``reviewer``'s vote on the node at ``path`` (a later vote replaces an earlier one)."""
    node = node_at(taxonomy, path)
    if node is None:
        raise TaxonomyError(f"no node at '{fmt(path)}' (renamed or removed meanwhile?)")
    if node.review is None:  # a person's node: kept, until the votes say otherwise
        node.review = Review(state="kept")
    node.review.votes[reviewer] = choice


@dataclass
class MergeResult:
    kept: list[NodePath] = field(default_factory=list)
    dropped: list[NodePath] = field(default_factory=list)
    ties: list[NodePath] = field(default_factory=list)  # kept on a tie
    waiting: list[NodePath] = field(default_factory=list)  # unreviewed, too few votes
    changed: list[NodePath] = field(default_factory=list)  # state differs from before
    reviewers: set[str] = field(default_factory=set)


def merge_votes(taxonomy: Taxonomy, *, min_votes: int = 1) -> MergeResult:
    """Set each voted node's state from the majority of its votes (in place); see the module."""
    if min_votes < 1:
        raise TaxonomyError("--min-votes must be at least 1")
    result = MergeResult()

    def visit(nodes: list[TaxonomyNode], parent: NodePath, inherited: frozenset[str]) -> None:
        for node in nodes:
            path = (*parent, node.name)
            below = inherited
            if node.review is not None:
                own = node.review.votes
                result.reviewers.update(own)
                votes: dict[str, str] = dict.fromkeys(inherited - own.keys(), "drop")
                votes.update(own)
                if len(votes) >= min_votes:
                    drops = sum(v == "drop" for v in votes.values())
                    keeps = len(votes) - drops
                    state: Literal["kept", "dropped"] = "dropped" if drops > keeps else "kept"
                    if drops == keeps:
                        result.ties.append(path)
                    if node.review.state != state:
                        result.changed.append(path)
                    node.review.state = state
                    (result.kept if state == "kept" else result.dropped).append(path)
                elif node.review.state == "unreviewed":
                    result.waiting.append(path)
                # the nearest own vote wins: a keep here clears a drop inherited from above
                below = (inherited - {r for r, v in own.items() if v == "keep"}) | {
                    r for r, v in own.items() if v == "drop"
                }
            if node.children is not None:
                visit(node.children, path, below)

    visit(taxonomy.fields, (), frozenset())
    return result


def preview_merge(taxonomy: Taxonomy, *, min_votes: int = 1) -> MergeResult:
    """What ``merge_votes`` would change, without changing ``taxonomy``."""
    return merge_votes(copy.deepcopy(taxonomy), min_votes=min_votes)


def collect_votes(target: Taxonomy, other: Taxonomy, source: str) -> list[str]:
    """Copy the votes recorded in ``other`` (a reviewer's copy of the file) into ``target``.

    Nodes are matched by path. A reviewer's vote in the copy replaces their vote in the target.
    Returns notes on what could not be matched or disagreed.
    """
    notes: list[str] = []
    for path, node, _dropped in other.walk():
        if node.review is None or not node.review.votes:
            continue
        here = node_at(target, path)
        if here is None:
            notes.append(
                f"{source}: '{fmt(path)}' is not in the merged file (renamed or added in the"
                " copy?); its votes are left out"
            )
            continue
        for reviewer, choice in node.review.votes.items():
            before = here.review.votes.get(reviewer) if here.review is not None else None
            if before is not None and before != choice:
                notes.append(
                    f"{source}: {reviewer} voted {choice} on '{fmt(path)}' there and {before}"
                    f" here; taking {choice}"
                )
            vote(target, path, reviewer, choice)
    return notes


# ----------------------------------------------------------------------------- interactive

HELP = """\
  k  keep    the node belongs in the taxonomy
  d  drop    leave it out, with everything under it
  r  rename  give it a better name (counts as keep)
  a  add     add a child node (a discipline) under it
  s  skip    decide later (you will be asked again next time)
  q  quit    stop here; every decision so far is saved
  ?  help    this text"""

ACTIONS = {
    "k": "keep",
    "keep": "keep",
    "d": "drop",
    "drop": "drop",
    "r": "rename",
    "rename": "rename",
    "a": "add",
    "add": "add",
    "s": "skip",
    "skip": "skip",
    "": "skip",
    "q": "quit",
    "quit": "quit",
    "?": "help",
    "h": "help",
    "help": "help",
}


@dataclass
class ReviewStats:
    keep: int = 0
    drop: int = 0
    renamed: int = 0
    added: int = 0
    skipped: int = 0
    left: int = 0  # nodes not reached (quit early)
    quit: bool = False


class ReviewSession:
    """One reviewer's pass over a file, one node at a time, saving after every decision.

    I/O is injected: ``ask(prompt) -> line`` (raises ``EOFError`` when input ends: the session
    stops as after ``q``) and ``say(text)`` (text may hold rich markup). By default the nodes
    shown are the unreviewed ones this reviewer has not voted on, outside subtrees that are
    dropped or that this reviewer dropped; ``everything`` shows every node, to change votes.
    """

    def __init__(
        self,
        path: Path,
        reviewer: str,
        ask: Callable[[str], str],
        say: Callable[[str], None],
        *,
        everything: bool = False,
        under: NodePath | None = None,
    ) -> None:
        reviewer = reviewer.strip()
        if not reviewer:
            raise TaxonomyError("--reviewer must name you (votes are recorded per reviewer)")
        self.path = path
        self.reviewer = reviewer
        self.ask = ask
        self.say = say
        self.everything = everything
        self.under = under
        self.stats = ReviewStats()

    def queue(self, taxonomy: Taxonomy) -> list[NodePath]:
        """The nodes to show, in file order."""
        paths: list[NodePath] = []
        cut: list[NodePath] = []  # subtrees out of the way: dropped, or dropped by this reviewer
        for path, node, _dropped in taxonomy.walk():
            if any(path[: len(c)] == c for c in cut):
                continue
            own = node.review.votes.get(self.reviewer) if node.review is not None else None
            if node.state == "dropped" and not self.everything:
                cut.append(path)
                continue
            if self.under is not None and path[: len(self.under)] != self.under:
                continue
            if self.everything or (node.state == "unreviewed" and own is None):
                paths.append(path)
            elif own == "drop":
                cut.append(path)
        return paths

    def run(self) -> ReviewStats:
        taxonomy = read(self.path)
        queue = self.queue(taxonomy)
        if not queue:
            self.say("Nothing to review: every node has your vote or a decision.")
            return self.stats
        self.say(
            f"Reviewing {len(queue)} nodes of {escape(str(self.path))} as"
            f" [bold]{escape(self.reviewer)}[/bold]."
            " k keep · d drop · r rename · a add child · s skip · q quit · ? help"
        )
        dropped: list[NodePath] = []
        for number, path in enumerate(queue, 1):
            if any(path[: len(d)] == d for d in dropped):
                continue  # under a node just dropped
            taxonomy = read(self.path)  # others may be voting in the same file
            if node_at(taxonomy, path) is None:
                continue  # renamed or removed meanwhile
            outcome = self._decide(taxonomy, path, number, len(queue))
            if outcome == "quit":
                self.stats.quit = True
                self.stats.left = len(queue) - number + 1
                break
            if outcome == "drop":
                dropped.append(path)
            elif isinstance(outcome, tuple):  # renamed: later entries under it follow
                queue[number:] = [
                    outcome + p[len(path) :] if p[: len(path)] == path else p
                    for p in queue[number:]
                ]
        return self.stats

    def _decide(
        self, taxonomy: Taxonomy, path: NodePath, number: int, total: int
    ) -> str | NodePath:
        self._show(taxonomy, path, number, total)
        while True:
            try:
                answer = self.ask("[k/d/r/a/s/q/?] ").strip().casefold()
            except EOFError:
                return "quit"
            action = ACTIONS.get(answer)
            if action is None:
                self.say(f"'{escape(answer)}' is not an action; type ? for help")
            elif action == "help":
                self.say(HELP)
            elif action == "skip":
                self.stats.skipped += 1
                return "skip"
            elif action == "quit":
                return "quit"
            elif action in ("keep", "drop"):
                choice: Vote = "keep" if action == "keep" else "drop"
                try:
                    edit_file(self.path, lambda t, c=choice: vote(t, path, self.reviewer, c))
                except TaxonomyError as error:
                    self.say(f"[red]not saved:[/red] {escape(str(error))}")
                    return "skip"
                setattr(self.stats, action, getattr(self.stats, action) + 1)
                return action
            elif action == "rename":
                renamed = self._rename(path)
                if renamed is not None:
                    return renamed
            elif action == "add":
                self._add(path)
                self._show(read(self.path), path, number, total)

    def _rename(self, path: NodePath) -> NodePath | None:
        try:
            name = self.ask(f"new name for '{path[-1]}' (empty: cancel): ").strip()
        except EOFError:
            return None
        if not name:
            return None

        def change(taxonomy: Taxonomy) -> NodePath:
            new_path = rename_node(taxonomy, path, name)
            node = node_at(taxonomy, new_path)
            if node is not None and node.review is not None:
                vote(taxonomy, new_path, self.reviewer, "keep")
            return new_path

        try:
            new_path = edit_file(self.path, change)
        except TaxonomyError as error:
            self.say(f"[red]not renamed:[/red] {escape(str(error))}")
            return None
        self.stats.renamed += 1
        self.stats.keep += 1
        self.say(f"renamed to '{escape(fmt(new_path))}' (and kept)")
        return new_path

    def _add(self, path: NodePath) -> None:
        try:
            name = self.ask(f"name of the new node under '{path[-1]}' (empty: cancel): ").strip()
            if not name:
                return
            node = node_at(read(self.path), path)
            make_sub_field = False
            if node is not None and node.is_leaf:
                answer = self.ask(
                    f"'{path[-1]}' is a discipline: with a child it becomes a sub-field and is no"
                    " longer generated itself. Go on? [y/N] "
                )
                if answer.strip().casefold() not in ("y", "yes"):
                    return
                make_sub_field = True
            description = self.ask("description (optional): ").strip() or None
        except EOFError:
            return
        try:
            added = edit_file(
                self.path,
                lambda t: add_node(
                    t,
                    name,
                    fmt(path),
                    description=description,
                    make_sub_field=make_sub_field,
                ),
            )
        except TaxonomyError as error:
            self.say(f"[red]not added:[/red] {escape(str(error))}")
            return
        self.stats.added += 1
        self.say(f"added '{escape(fmt(added))}'")

    def _show(self, taxonomy: Taxonomy, path: NodePath, number: int, total: int) -> None:
        node = node_at(taxonomy, path)
        assert node is not None
        if node.is_leaf:
            kind = "discipline"
        else:
            below = sum(1 for p, n, _ in taxonomy.walk() if p[: len(path)] == path and n.is_leaf)
            noun = "discipline" if below == 1 else "disciplines"
            kind = f"{'field' if len(path) == 1 else 'sub-field'}, {below} {noun} below"
        parent = f"[dim]{escape(fmt(path[:-1]))} >[/dim] " if len(path) > 1 else ""
        name = escape(path[-1])
        lines = [f"\n[dim]\\[{number}/{total}][/dim] {parent}[bold]{name}[/bold]  ({kind})"]
        if node.description:
            lines.append(f"  {escape(node.description)}")
        if node.children:
            names = escape(", ".join(child.name for child in node.children[:8]))
            more = f", … {len(node.children) - 8} more" if len(node.children) > 8 else ""
            lines.append(f"  [dim]children:[/dim] {names}{more}")
        own = node.review.votes.get(self.reviewer) if node.review is not None else None
        if own is not None or node.state != "unreviewed":
            lines.append(f"  [dim]state {node.state}; your vote: {own or 'none'}[/dim]")
        self.say("\n".join(lines))
