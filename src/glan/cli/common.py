"""What every ``glan`` command shares: its consoles, the one way it fails, the one way it reads a
comma list, and options declared as data.

A command does its work inside ``with user_errors():``. An error the user can fix (a bad option,
a config file, a full disk, a wrong key) becomes one line on stderr, ``error: ...``, and exit
status 1; never a traceback. A long command passes ``stopped=`` (what was kept): Ctrl-C and SIGTERM
then both stop it the same way, say that, and exit 130 or 143.
"""

from __future__ import annotations

import inspect
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from glan.config import ConfigError
from glan.curation import CurationError, MissingExtraError
from glan.llm.errors import FatalLLMError
from glan.publish.export import ExportError
from glan.publish.report import ReportError
from glan.run import is_run
from glan.run.lock import RunLockedError
from glan.run.parts import RunFilesError
from glan.run.space import OutOfSpace
from glan.run.store import DB_NAME, StoreError
from glan.taxonomy import TaxonomyError

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Errors a user can fix; each message says what is wrong and what to do.
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    CurationError,
    ExportError,
    FatalLLMError,
    MissingExtraError,
    OutOfSpace,
    ReportError,
    RunFilesError,
    RunLockedError,
    StoreError,
    TaxonomyError,
)
RERUN = "; nothing received is lost: fix it and run the same command again"


def fail(message: object, code: int = 1) -> NoReturn:
    """Say what is wrong in one line on stderr and exit with ``code``."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    err.print(f"[red]error:[/red] {escape(text)}")
    raise typer.Exit(code)


@contextmanager
def user_errors(
    *,
    stopped: str | Callable[[], str] | None = None,
    rerun: bool = False,
    names: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Run a command's work: whatever the user can fix ends it with one line and exit status 1.

    ``stopped``: what to say when Ctrl-C or SIGTERM stops the work (what was kept; exit 130 or
    143); without it an interrupt ends the command as usual. ``rerun``: an OS or SQLite error (a
    full disk) left the run resumable. ``names``: the option of each model field that the
    command names otherwise, for validation errors.
    """
    stop = _Stop() if stopped is not None else None
    try:
        with stop or nullcontext():
            yield
    except KeyboardInterrupt:
        if stop is None:
            raise
        err.print(escape(stopped() if callable(stopped) else str(stopped)))
        raise typer.Exit(stop.code) from None
    except USER_ERRORS as error:
        fail(error)
    except ValidationError as error:
        fail(option_problems(error, names or {}))
    except (OSError, sqlite3.Error) as error:
        fail(f"{error}{RERUN if rerun else ''}")


class _Stop:
    """While a command works, SIGTERM stops it the way Ctrl-C does: asyncio's SIGINT handler
    cancels the run's task, so the same clean-up runs and the same words are said. ``code`` is
    the exit status: 130 after SIGINT, 143 after SIGTERM."""

    def __init__(self) -> None:
        self.code = 128 + signal.SIGINT
        self._previous: Any = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        self.code = 128 + signum
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)  # asyncio.run's (cancels the task) or Python's (raises)
        else:
            raise KeyboardInterrupt


def option_problems(error: ValidationError, names: Mapping[str, str]) -> str:
    """A pydantic error about options, as the options are called: ``--shingle: ...; ...``."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = names.get(field, field)
        problems.append(f"--{name.replace('_', '-')}: {item['msg']}")
    return "; ".join(problems)


def require_run(run: str | Path) -> None:
    """A run directory, local or a Ray run's URI, has a glan.db: say so when it has none."""
    if not is_run(run):
        raise ConfigError(f"{run} is not a glan run directory (no {DB_NAME} in it)")


def no_blank_languages(**languages: str | None) -> None:
    """An option naming a language that is given empty (``--language ""``) is a mistake, not a
    way to ask for the default (leaving the option out is)."""
    for name, value in languages.items():
        if value is not None and not value.strip():
            raise ConfigError(
                f"--{name.replace('_', '-')} is empty: name a language (Korean, ko, ...) or leave"
                " the option out for the default"
            )


def comma_list(value: str | None) -> list[str]:
    """``'a, b,,c'`` as ``['a', 'b', 'c']``: how every option that takes a list reads it."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


# -- options as data ------------------------------------------------------------------------------


REQUIRED = inspect.Parameter.empty  # the default of an option that must be given


def option(name: str, kind: Any, *declarations: str, default: Any = None, **info: Any) -> Any:
    """The option ``--name`` (or ``declarations``) as a parameter typer reads."""
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(*declarations, **info)],
    )


def field_option(model: type[BaseModel], name: str, *declarations: str, **info: Any) -> Any:
    """The option of a model's field: its type and its default are the field's."""
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    return option(name, field.annotation, *declarations, default=default, **info)


def argument(name: str, kind: Any, **info: Any) -> Any:
    """The positional argument ``NAME`` as a parameter typer reads."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, typer.Argument(**info)]
    )


RUN = argument(
    "run", Path, help="A run directory (the --out of glan generate).", show_default=False
)


def takes(parameters: Sequence[inspect.Parameter]) -> Callable[[F], F]:
    """Give a ``command(**options)`` these parameters, in this order (typer reads them from the
    signature); the command gets them as keyword arguments."""

    def give(function: F) -> F:
        function.__signature__ = inspect.Signature(list(parameters))  # type: ignore[attr-defined]
        return function

    return give


def default_is(value: object) -> str:
    """How a help text shows a default that is not the option's own (which is None: unset)."""
    return f"\\[default: {value}]"


# -- commands -------------------------------------------------------------------------------------


def command(group: typer.Typer, name: str, **info: Any) -> Callable[[F], F]:
    """``group.command(name)`` with the docstring's paragraphs reflowed to the terminal width
    (rich keeps a docstring's line breaks, which wraps badly)."""

    def register(function: F) -> F:
        paragraphs = (inspect.getdoc(function) or "").split("\n\n")
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        group.command(name, help=text, **info)(function)
        return function

    return register


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
