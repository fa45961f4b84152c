"""Every option the README or a ``--help`` names exists, on the command that names it (issue 16,
case 5): a user who copies a line from the docs never meets ``No such option``."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from glan.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MARKUP = re.compile(r"\[/?[a-z ]+\]")  # rich markup in help texts: [bold], [/bold]


def commands() -> dict[str, Any]:
    """Every command of the CLI (as typer's click commands) by its path, ``"generate"``,
    ``"taxonomy build"``."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        found[path] = command
        if hasattr(command, "commands"):  # a group
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


COMMANDS = commands()


def options_of(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return names


def command_lines(text: str) -> Iterator[list[str]]:
    """The command lines of a shell text as tokens: continued lines joined, comments cut, split
    at ``;``, ``&&``, ``|`` and ``&``."""
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)
        for segment in re.split(r"&&|\|\||[;|&]", line):
            try:
                tokens = shlex.split(segment)
            except ValueError:
                tokens = segment.split()
            if tokens:
                yield tokens


def glan_command(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(command path, options) of a ``glan ...`` line; None for another tool's line. The path
    of a line naming a command that does not exist ends in ``?``; a placeholder (``glan COMMAND
    --help``) is no command."""
    if "glan" not in tokens:
        return None
    words = tokens[tokens.index("glan") + 1 :]
    path = ""
    for word in words:
        if word.startswith("-") or word.isupper():
            break
        if f"{path} {word}".strip() not in COMMANDS:
            if hasattr(COMMANDS[path], "commands"):  # a group: the word should be its command
                path += " ?"
            break
        path = f"{path} {word}".strip()
    return path, [token.split("=")[0] for token in words if OPTION.fullmatch(token.split("=")[0])]


def readme_mentions() -> tuple[list[tuple[str, str, str]], set[str], set[str]]:
    """(what the README shows, command path, option) of each ``glan ...`` line, the options shown
    on other tools' lines (``python benchmarks/...``), and the options named on their own."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    on_commands, elsewhere, alone = [], set(), set()
    for tokens in (t for piece in [*blocks, *spans] for t in command_lines(piece)):
        found = glan_command(tokens)
        if found is not None:
            path, options = found
            on_commands += [(" ".join(tokens), path, option) for option in options]
        elif tokens[0].startswith("--"):
            alone.update(OPTION.findall(" ".join(tokens)))
        else:
            elsewhere.update(OPTION.findall(" ".join(tokens)))
    alone.update(OPTION.findall(re.sub(r"`[^`]+`", "", prose)))
    return on_commands, elsewhere, alone


def test_every_glan_line_of_the_readme_names_a_command_and_its_options():
    on_commands, _, _ = readme_mentions()
    assert len(on_commands) > 50  # the scan finds the README's commands
    missing = [
        f"{line!r}: glan {path} has no {option}"
        for line, path, option in on_commands
        if path not in COMMANDS or option not in options_of(COMMANDS[path])
    ]
    assert not missing, "\n".join(missing)


def test_every_option_the_readme_names_alone_exists():
    _, elsewhere, alone = readme_mentions()
    everywhere = set().union(*(options_of(c) for c in COMMANDS.values()))
    assert {"--max-retries", "--prices"} <= alone
    assert sorted(alone - everywhere - elsewhere) == []


def help_texts(command: Any) -> str:
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    return MARKUP.sub("", " ".join(texts))


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_a_help_names_exists(path):
    """A help text may name its own options and those of the commands it names."""
    text = help_texts(COMMANDS[path])
    allowed = options_of(COMMANDS[path])
    for named in re.findall(r"glan ((?:taxonomy |prompts )?[a-z]+)", text):
        assert named in COMMANDS, f"glan {path} --help names glan {named}, which does not exist"
        allowed |= options_of(COMMANDS[named])
    assert sorted(set(OPTION.findall(text)) - allowed) == []


def test_the_scan_catches_an_option_that_does_not_exist():
    assert glan_command(shlex.split("glan estimate --prices p.yaml --nope 1")) == (
        "estimate",
        ["--prices", "--nope"],
    )
    assert "--nope" not in options_of(COMMANDS["estimate"])
    assert glan_command(["glan", "estmate", "--out", "x"]) == (" ?", ["--out"])
    assert glan_command(["glan", "taxonomy", "bild", "--out", "x"]) == ("taxonomy ?", ["--out"])
    assert glan_command(["glan", "COMMAND", "--help"]) == ("", ["--help"])
