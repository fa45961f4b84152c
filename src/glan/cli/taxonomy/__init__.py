"""``glan taxonomy ...``: one module per step of the taxonomy's life, as in ``glan.taxonomy``.

``build`` (the teacher drafts it), ``review`` (review and merge: people vote, the majority
decides), ``edit`` (add, remove, rename, init), ``show`` (show and validate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glan.cli.common import command

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

FileArg = Annotated[Path, typer.Argument(help="The taxonomy YAML file.", show_default=False)]


def register(app: typer.Typer) -> None:
    from glan.cli.taxonomy import build, edit, review, show

    commands = {  # in the order --help lists them
        "build": build.build_command,
        "review": review.review_command,
        "merge": review.merge_command,
        "add": edit.add_command,
        "remove": edit.remove_command,
        "rename": edit.rename_command,
        "init": edit.init_command,
        "show": show.show_command,
        "validate": show.validate_command,
    }
    for name, function in commands.items():
        command(taxonomy_app, name)(function)
    app.add_typer(taxonomy_app, name="taxonomy")
