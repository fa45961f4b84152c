"""``glan prompts export``: the prompt templates, copied out to read and edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glan import prompts as prompt_templates
from glan.cli.common import command, out, user_errors

prompts_app = typer.Typer(
    help=(
        "The prompt templates (Jinja2). Export them, edit them, and pass --prompts DIR to glan"
        " generate (or glan taxonomy build); the prompt_version recorded in each row changes"
        " with them."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def register(app: typer.Typer) -> None:
    command(prompts_app, "export")(export_command)
    app.add_typer(prompts_app, name="prompts")


def export_command(
    directory: Annotated[Path, typer.Argument(help="Where to copy the templates.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite templates there.")] = False,
) -> None:
    """Copy the bundled prompt templates into DIRECTORY, to read and edit.

    Then pass [bold]--prompts DIRECTORY[/bold] to glan generate (or set prompts_dir in the
    config): each NAME.j2 there replaces the bundled template of that name (delete the ones you
    do not change). The prompt_version recorded in every row is a hash of the templates used.
    """
    with user_errors():
        written = prompt_templates.export(directory, force=force)
    for path in written:
        out.print(str(path))
    out.print(
        f"{len(written)} templates in {directory}; use them with glan generate --prompts"
        f" {directory} (bundled prompt version {prompt_templates.PROMPT_VERSION})."
    )
