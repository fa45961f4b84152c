"""``glan taxonomy review`` and ``glan taxonomy merge``: people vote on each node, in the
terminal or in the file, and the majority decides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from glan.cli.common import err, out, plural, user_errors
from glan.cli.taxonomy import FileArg
from glan.taxonomy import Taxonomy
from glan.taxonomy.edit import edit_file, fmt, locate, read
from glan.taxonomy.review import MergeResult, ReviewSession, ReviewStats, collect_votes, merge_votes


def review_command(
    file: FileArg,
    reviewer: Annotated[
        str, typer.Option(help="Your name: your votes are recorded under it in the file.")
    ],
    everything: Annotated[
        bool,
        typer.Option(
            "--all", help="Show every node, also those you voted on or that were decided."
        ),
    ] = False,
    under: Annotated[
        str | None, typer.Option(help="Review only this node and what is under it.")
    ] = None,
) -> None:
    """Vote keep or drop on each node, one at a time, in the terminal.

    Keys: [bold]k[/bold] keep, [bold]d[/bold] drop (its subtree goes with it), [bold]r[/bold]
    rename, [bold]a[/bold] add a child, [bold]s[/bold] skip, [bold]q[/bold] save and quit. Every
    decision is saved at once; run the command again to go on where you stopped. Several
    reviewers may vote in the same file (in turn or at once), or each in a copy (then
    [bold]glan taxonomy merge FILE --from COPY[/bold]).

    Prefer an editor? Write votes in the file: [italic]review: {state: unreviewed, votes:
    {alice: keep}}[/italic], then run [bold]glan taxonomy merge[/bold].
    """
    with user_errors(stopped="\nstopped; every decision so far is saved."):
        scope = locate(read(file), under) if under else None
        session = ReviewSession(
            file,
            reviewer,
            ask=lambda prompt: out.input(escape(prompt)),
            say=out.print,
            everything=everything,
            under=scope,
        )
        stats = session.run()
    _print_review(file, reviewer, stats)


def _print_review(file: Path, reviewer: str, stats: ReviewStats) -> None:
    done = stats.keep + stats.drop
    if not (done or stats.skipped or stats.quit):
        return
    left = f", {stats.left} left for later" if stats.left else ""
    extra = "".join(
        f", {n} {what}" for n, what in ((stats.renamed, "renamed"), (stats.added, "added")) if n
    )
    out.print(
        f"{reviewer}: {stats.keep} keep, {stats.drop} drop, {stats.skipped} skipped{extra}"
        f"{left}. Saved in {file}."
    )
    out.print(
        f"when every reviewer is done: glan taxonomy merge {file}"
        + (" (then run this again to review the rest)" if stats.left or stats.skipped else "")
    )


def merge_command(
    file: FileArg,
    copies: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            help="A reviewer's copy of FILE whose votes to bring in (repeat for each copy).",
        ),
    ] = None,
    min_votes: Annotated[
        int, typer.Option(help="Decide only nodes with at least this many votes.")
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; write nothing.")
    ] = False,
) -> None:
    """Apply the reviewers' votes: the majority decides whether each node is kept or dropped.

    A drop vote on a node counts for everything under it (unless the reviewer voted there too);
    a tie keeps the node; a node with fewer than --min-votes votes keeps its state. Votes stay
    in the file, so a later merge after more votes decides again.
    """
    notes: list[str] = []

    def change(taxonomy: Taxonomy) -> MergeResult:
        for copy in copies or []:
            notes.extend(collect_votes(taxonomy, read(copy), str(copy)))
        return merge_votes(taxonomy, min_votes=min_votes)

    with user_errors():
        result = change(read(file)) if dry_run else edit_file(file, change)
    for note in notes:
        err.print(f"note: {escape(note)}")
    reviewers = ", ".join(sorted(result.reviewers)) or "nobody"
    ties = f" ({len(result.ties)} on a tie)" if result.ties else ""
    verb = "would change" if dry_run else "changed"
    out.print(
        f"votes of {reviewers}: {len(result.kept)} kept{ties}, {len(result.dropped)} dropped;"
        f" {verb} {len(result.changed)} nodes{'' if dry_run else f' in {file}'}."
    )
    if result.waiting:
        shown = "; ".join(fmt(p) for p in result.waiting[:5])
        more = f" and {len(result.waiting) - 5} more" if len(result.waiting) > 5 else ""
        why = "nobody voted on them" if min_votes == 1 else f"fewer than {min_votes} votes"
        out.print(
            f"{plural(len(result.waiting), 'node')} still unreviewed ({why}): {shown}{more}."
            " Review them, or generate with --allow-unreviewed."
        )
