"""``glan taxonomy add``, ``remove``, ``rename`` and ``init``: a person edits the taxonomy file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from glan.cli.common import fail, out, plural, user_errors
from glan.cli.taxonomy import FileArg
from glan.taxonomy.edit import add_node, edit_file, fmt, remove_node, rename_node


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
    with user_errors():
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
    out.print(
        f"added '{fmt(path)}' to {file}. A later glan generate on the same run directory asks"
        " only for it; every other discipline's stored work is reused."
    )


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
    with user_errors():
        path, gone = edit_file(file, lambda t: remove_node(t, node))
    out.print(
        f"removed '{fmt(path)}' ({plural(gone, 'discipline')}) from {file}. Rows already"
        " generated for it stay in the run directory; glan status lists them."
    )


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
    with user_errors():
        path = edit_file(file, lambda t: rename_node(t, node, new_name))
    out.print(f"renamed to '{fmt(path)}' in {file}.")


def init_command(
    file: Annotated[Path, typer.Argument(help="Where to write the copy.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Write a copy of the bundled taxonomy (the paper's 126 disciplines) to edit or extend."""
    if file.exists() and not force:
        fail(f"{file} exists; pass --force to overwrite it")
    try:
        text = (resources.files("glan") / "data" / "taxonomy.yaml").read_text(encoding="utf-8")
        file.write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {file}: {error.strerror or error}")
    out.print(f"wrote {file}; extend it with glan taxonomy add {file} NAME --under PARENT")
