"""``glan taxonomy ...`` (build, review, merge, add, remove, rename, show, validate, init) and
``glan prompts ...`` (export)."""

from __future__ import annotations

import inspect
import logging
import sqlite3
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from glan import prompts as prompt_templates
from glan.config import ConfigError
from glan.llm.errors import FatalLLMError
from glan.run.store import DB_NAME, Store, StoreError
from glan.taxonomy import Taxonomy, TaxonomyError, TaxonomyNode
from glan.taxonomy.build import BuildConfig, build, default_work_dir
from glan.taxonomy.check import check_file
from glan.taxonomy.edit import (
    add_node,
    edit_file,
    fmt,
    locate,
    read,
    remove_node,
    rename_node,
)
from glan.taxonomy.review import MergeResult, ReviewSession, collect_votes, merge_votes

USER_ERRORS = (ConfigError, TaxonomyError, StoreError, FatalLLMError)
F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

taxonomy_app = typer.Typer(
    help=(
        "Build, review and extend the taxonomy GLAN walks (field > sub-field > discipline)."
        " The teacher drafts it ([bold]build[/bold]), people vote keep/drop on each node"
        " ([bold]review[/bold]), the majority decides ([bold]merge[/bold]), and you grow it node"
        " by node ([bold]add[/bold]): a later [bold]glan generate[/bold] on the same run"
        " directory pays only for the new nodes."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)
prompts_app = typer.Typer(
    help=(
        "The prompt templates (Jinja2). Export them, edit them, and pass --prompts DIR to glan"
        " generate (or glan taxonomy build); the prompt_version recorded in each row changes"
        " with them."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)

FileArg = Annotated[Path, typer.Argument(help="The taxonomy YAML file.", show_default=False)]


def register(app: typer.Typer) -> None:
    app.add_typer(taxonomy_app, name="taxonomy")
    app.add_typer(prompts_app, name="prompts")


def _command(group: typer.Typer, name: str) -> Callable[[F], F]:
    """``group.command(name)`` with the docstring's paragraphs reflowed to the terminal width."""

    def register_command(function: F) -> F:
        paragraphs = (inspect.getdoc(function) or "").split("\n\n")
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        group.command(name, help=text)(function)
        return function

    return register_command


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


# ----------------------------------------------------------------------------------- build


@_command(taxonomy_app, "build")
def build_command(
    out_file: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the drafted taxonomy YAML.")
    ],
    model: Annotated[str, typer.Option(help="Teacher model that drafts the tree.")] = "gpt-4o-mini",
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible endpoint. \\[default: $OPENAI_BASE_URL or OpenAI]"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key. \\[default: $OPENAI_API_KEY]")
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(help="Language of the node names, e.g. Korean or ko. \\[default: English]"),
    ] = None,
    depth: Annotated[
        int,
        typer.Option(help="Levels: 3 is field > sub-field > discipline, 2 field > discipline."),
    ] = 3,
    max_fields: Annotated[int, typer.Option(help="Top-level fields to ask for, at most.")] = 10,
    max_children: Annotated[
        int, typer.Option(help="Children to ask for per node below the fields, at most.")
    ] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Seed sent with each request.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 8,
    prompts_dir: Annotated[
        Path | None,
        typer.Option("--prompts", help="Your prompt templates (taxonomy_*.j2 replace ours)."),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the build keeps its calls. \\[default: OUT.glan-build next to OUT]"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite OUT if it exists (its votes are lost).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log retries.")] = False,
) -> None:
    """Draft a taxonomy with the teacher, level by level.

    Breadth first, as the paper did: one call for the fields of human knowledge and capabilities
    (skills such as coding and writing included), then one call per field for its sub-fields,
    then one call per sub-field for its disciplines. Names repeated across branches
    are merged (the first stays). Every node starts unreviewed.

    Stop it at any moment and run the same command again: it resends nothing already answered
    (calls are kept in OUT.glan-build/). Next: [bold]glan taxonomy review OUT --reviewer
    NAME[/bold].
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if out_file.exists() and not force:
            raise ConfigError(
                f"{out_file} exists (it may hold review votes); pass --force to overwrite it,"
                " or choose another --out"
            )
        config = BuildConfig.make(
            model=model,
            base_url=base_url,
            api_key=api_key,
            language=language,
            depth=depth,
            max_fields=max_fields,
            max_children=max_children,
            temperature=temperature,
            seed=seed,
            concurrency=concurrency,
            prompts_dir=prompts_dir,
        )
        result = build(
            config,
            out_file,
            work_dir=work_dir,
            log=lambda line: err.print(f"\\[glan taxonomy] {escape(line)}"),
        )
    except KeyboardInterrupt:
        err.print("stopped; every reply received is stored. Run the same command to continue.")
        raise typer.Exit(130) from None
    except USER_ERRORS as error:
        _fail(str(error))
    except (OSError, sqlite3.Error) as error:
        _fail(f"{error}; nothing received is lost: fix it and run the same command again")
    spent = f", ${result.cost:,.4f}" if result.cost else ""
    tokens_in, tokens_out = result.tokens
    tokens = f"{result.sent} requests sent ({tokens_in:,} tokens in, {tokens_out:,} out{spent})"
    reused = f", {result.reused} answers reused from {work_dir or default_work_dir(out_file)}"
    err.print(tokens + (reused if result.reused else ""))
    if result.failed or result.taxonomy is None:
        for path, problem in result.failed[:5]:
            err.print(f"failed: {fmt(path) or 'the list of fields'}: {escape(problem)}")
        err.print(
            f"[yellow]{len(result.failed)} calls failed; {out_file} was not written. Run the same"
            " command again to retry them (nothing answered is asked again)."
        )
        raise typer.Exit(3)
    levels = " > ".join(str(n) for n in result.levels)
    merged = f"; {len(result.merged)} repeated names merged" if result.merged else ""
    pruned = f"; {len(result.pruned)} emptied branches left out" if result.pruned else ""
    out.print(
        f"wrote {out_file}: {levels} nodes per level,"
        f" {len(result.taxonomy.disciplines())} disciplines{merged}{pruned}; all unreviewed."
    )
    out.print(
        f"next: glan taxonomy review {out_file} --reviewer NAME,"
        f" then glan taxonomy merge {out_file}"
    )


# ---------------------------------------------------------------------------------- review


@_command(taxonomy_app, "review")
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
    try:
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
    except KeyboardInterrupt:
        out.print("\nstopped; every decision so far is saved.")
        raise typer.Exit(130) from None
    except USER_ERRORS as error:
        _fail(str(error))
    done = stats.keep + stats.drop
    if done or stats.skipped or stats.quit:
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


@_command(taxonomy_app, "merge")
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

    try:
        result = change(read(file)) if dry_run else edit_file(file, change)
    except USER_ERRORS as error:
        _fail(str(error))
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
            f"{_plural(len(result.waiting), 'node')} still unreviewed ({why}): {shown}{more}."
            " Review them, or generate with --allow-unreviewed."
        )


# ---------------------------------------------------------------------------- add / remove


@_command(taxonomy_app, "add")
def add_command(
    file: FileArg,
    name: Annotated[str, typer.Argument(help="Name of the new node.", show_default=False)],
    under: Annotated[
        str | None,
        typer.Option(
            help="Parent: a name or a 'Field > Sub-field' path. \\[default: a new top-level field]"
        ),
    ] = None,
    description: Annotated[
        str | None, typer.Option(help="What it covers (shown to the teacher).")
    ] = None,
    unreviewed: Annotated[
        bool,
        typer.Option(
            "--unreviewed", help="Let the reviewers vote on it (a node you add counts as kept)."
        ),
    ] = False,
    make_sub_field: Annotated[
        bool,
        typer.Option(
            "--make-sub-field",
            help="Allowed to add under a discipline, which turns it into a sub-field.",
        ),
    ] = False,
) -> None:
    """Add a discipline (or a field) to the taxonomy.

    A discipline's id comes from its path, so every other discipline keeps its stored work: a
    later [bold]glan generate --taxonomy FILE[/bold] on the same run directory sends requests
    only for the new one.
    """
    try:
        path = edit_file(
            file,
            lambda t: add_node(
                t,
                name,
                under,
                description=description,
                unreviewed=unreviewed,
                make_sub_field=make_sub_field,
            ),
        )
    except USER_ERRORS as error:
        _fail(str(error))
    out.print(
        f"added '{fmt(path)}' to {file}. A later glan generate on the same run directory asks"
        " only for it; every other discipline's stored work is reused."
    )


@_command(taxonomy_app, "remove")
def remove_command(
    file: FileArg,
    node: Annotated[
        str, typer.Argument(help="A name or a 'Field > Sub-field' path.", show_default=False)
    ],
) -> None:
    """Remove a node and everything under it from the taxonomy.

    A later generate sends nothing for it. Rows it already has stay in the run directory and in
    instructions.jsonl ([bold]glan status[/bold] lists them). To keep a record of the decision,
    drop it in review instead.
    """
    try:
        path, gone = edit_file(file, lambda t: remove_node(t, node))
    except USER_ERRORS as error:
        _fail(str(error))
    out.print(
        f"removed '{fmt(path)}' ({_plural(gone, 'discipline')}) from {file}. Rows already"
        " generated for it stay in the run directory; glan status lists them."
    )


@_command(taxonomy_app, "rename")
def rename_command(
    file: FileArg,
    node: Annotated[
        str, typer.Argument(help="A name or a 'Field > Sub-field' path.", show_default=False)
    ],
    new_name: Annotated[str, typer.Argument(help="The new name.", show_default=False)],
) -> None:
    """Rename a node.

    Its disciplines get new ids (ids come from paths), so a later generate makes them afresh;
    the old rows stay in the run directory.
    """
    try:
        path = edit_file(file, lambda t: rename_node(t, node, new_name))
    except USER_ERRORS as error:
        _fail(str(error))
    out.print(f"renamed to '{fmt(path)}' in {file}.")


@_command(taxonomy_app, "init")
def init_command(
    file: Annotated[Path, typer.Argument(help="Where to write the copy.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Write a copy of the bundled taxonomy (the paper's 126 disciplines) to edit or extend."""
    if file.exists() and not force:
        _fail(f"{file} exists; pass --force to overwrite it")
    try:
        text = (resources.files("glan") / "data" / "taxonomy.yaml").read_text(encoding="utf-8")
        file.write_text(text, encoding="utf-8")
    except OSError as error:
        _fail(f"cannot write {file}: {error.strerror or error}")
    out.print(f"wrote {file}; extend it with glan taxonomy add {file} NAME --under PARENT")


# ------------------------------------------------------------------------------- show/check


@_command(taxonomy_app, "show")
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
    try:
        taxonomy = Taxonomy.load(file)
        rows = _run_rows(run) if run is not None else None
    except USER_ERRORS as error:
        _fail(str(error))
    disciplines = taxonomy.disciplines()
    live = {d.path[:k] for d in disciplines for k in range(1, len(d.path) + 1)}
    below: dict[tuple[str, ...], int] = {}
    for d in disciplines:
        for k in range(1, len(d.path)):
            below[d.path[:k]] = below.get(d.path[:k], 0) + 1
    ids = {d.path: d.id for d in disciplines}
    out.print(
        f"[bold]{escape(str(file) if file else 'bundled taxonomy')}[/bold]: {_summary(taxonomy)}"
    )
    tree = Tree("[dim]fields[/dim]", hide_root=True)

    def add(
        branch: Tree, nodes: list[TaxonomyNode], parent: tuple[str, ...], dropped: bool
    ) -> None:
        for node in nodes:
            path = (*parent, node.name)
            gone = dropped or node.state == "dropped"
            label = escape(node.name)
            label = f"[strike dim]{label}[/strike dim]" if gone else label
            if not node.is_leaf:
                label = f"[bold]{label}[/bold]" if not gone else label
                label += f" [dim]({below.get(path, 0)})[/dim]" if path in live else ""
            label += _state(node, votes)
            if rows is not None and path in ids:
                count = rows.get(ids[path])
                label += f" [cyan]{count:,} rows[/cyan]" if count else " [magenta]new[/magenta]"
            child = branch.add(label)
            if node.children and (depth is None or len(path) < depth):
                add(child, node.children, path, gone)

    add(tree, taxonomy.fields, (), False)
    out.print(tree)


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
        _plural(len(fields), "field"),
        _plural(len(inner), "sub-field"),
        _plural(len(disciplines), "discipline"),
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
    if not (run / DB_NAME).exists():
        raise ConfigError(f"{run} is not a glan run directory (no {DB_NAME} in it)")
    store = Store.open(run)
    try:
        return store.rows_by_root()
    finally:
        store.close()


@_command(taxonomy_app, "validate")
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
            f"[red]{file}: {_plural(errors, 'error')}[/red]"
            + (f", {_plural(warnings, 'warning')}" if warnings else "")
        )
        raise typer.Exit(1)
    out.print(f"{file}: ok" + (f" ({_plural(warnings, 'warning')})" if warnings else ""))


# ------------------------------------------------------------------------------------ prompts


@_command(prompts_app, "export")
def export_command(
    directory: Annotated[Path, typer.Argument(help="Where to copy the templates.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite templates there.")] = False,
) -> None:
    """Copy the bundled prompt templates into DIRECTORY, to read and edit.

    Then pass [bold]--prompts DIRECTORY[/bold] to glan generate (or set prompts_dir in the
    config): each NAME.j2 there replaces the bundled template of that name (delete the ones you
    do not change). The prompt_version recorded in every row is a hash of the templates used.
    """
    try:
        written = prompt_templates.export(directory, force=force)
    except USER_ERRORS as error:
        _fail(str(error))
    for path in written:
        out.print(str(path))
    out.print(
        f"{len(written)} templates in {directory}; use them with glan generate --prompts"
        f" {directory} (bundled prompt version {prompt_templates.PROMPT_VERSION})."
    )
