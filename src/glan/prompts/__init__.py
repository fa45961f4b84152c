"""Prompt templates: plain Jinja2 files beside this module, so a user can read and change them.

A run may name a directory of its own templates (``--prompts DIR``, config ``prompts_dir``): a
``NAME.j2`` there replaces the bundled template of that name, the others stay bundled. ``glan
prompts export DIR`` copies the bundled ones out as a starting point.

A prompt version is a hash of the text of the templates a run uses: it is recorded with each row
and changes whenever one of them does. A single-turn row's version leaves out the templates only
conversations use (``CONVERSATION_TEMPLATES``); a conversation's covers them too.
``PROMPT_VERSION`` and ``render`` are those of the bundled templates; ``prompts_for(directory)``
gives the set a run with its own directory uses.
"""

from __future__ import annotations

import difflib
import hashlib
import shutil
import traceback
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
from jinja2 import meta

from glan.config import ConfigError

SUFFIX = ".j2"
# Templates only conversations (--turns > 1) use: not part of a single-turn row's prompt version.
CONVERSATION_TEMPLATES = frozenset({"followup"})


class Prompts:
    """The templates of one run: the bundled ones, each replaceable by a file in ``directory``."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.bundled = _bundled()
        self.overrides: dict[str, Path] = {}
        if directory is not None:
            if not directory.is_dir():
                what = "not found" if not directory.exists() else "is not a directory"
                raise ConfigError(
                    f"prompts directory {directory} {what}"
                    " (glan prompts export DIR writes the bundled templates there)"
                )
            self.overrides = {
                path.name.removesuffix(SUFFIX): path
                for path in sorted(directory.glob(f"*{SUFFIX}"))
                if path.is_file()
            }
        self.texts = {**self.bundled, **{n: _read(p) for n, p in self.overrides.items()}}
        # the templates actually used, bundled or the user's: by single-turn rows (and taxonomy
        # builds), and by conversations
        self.version = _digest(
            {n: t for n, t in self.texts.items() if n not in CONVERSATION_TEMPLATES}
        )
        self.conversation_version = _digest(self.texts)
        # Rendered from the very texts hashed above: a file edited later changes neither.
        self.environment = jinja2.Environment(
            loader=jinja2.DictLoader(
                {n + SUFFIX: _decode(n, t, self) for n, t in self.texts.items()}
            ),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
            auto_reload=False,  # the texts are fixed above; checking them per render costs
        )
        self._templates: dict[str, jinja2.Template] = {}
        self._check()  # a broken template is a config error now, not 1000 failed requests

    def _check(self) -> None:
        """The user's templates, before any request: each parses, uses only the variables the
        template it replaces is given, and replaces a template or is included by one (a file
        that does neither is most likely a misspelt name, and silently unused)."""
        trees = {name: self._parse(name) for name in self.overrides}
        included = {
            ref.removesuffix(SUFFIX)
            for tree in trees.values()
            for ref in meta.find_referenced_templates(tree)
            if ref
        }
        for name, tree in trees.items():
            if name in self.bundled:
                allowed = self.variables(name)
            elif name in included:  # a part included by templates: it sees their variables
                allowed = frozenset().union(*(self.variables(n) for n in self.bundled))
            else:
                raise ConfigError(_unknown_template(self.overrides[name], sorted(self.bundled)))
            unknown = meta.find_undeclared_variables(tree) - allowed
            if unknown:
                raise ConfigError(_unknown_variables(self.overrides[name], tree, unknown, allowed))

    def _parse(self, name: str) -> jinja2.nodes.Template:
        source = self.environment.loader.get_source(self.environment, name + SUFFIX)[0]  # type: ignore[union-attr]
        try:
            return self.environment.parse(source)
        except jinja2.TemplateSyntaxError as error:
            raise ConfigError(
                f"{self.overrides[name]}:{error.lineno}: template error: {error.message}"
            ) from None

    def variables(self, name: str) -> frozenset[str]:
        """The variables template ``name`` is rendered with: those its bundled version uses."""
        source = self.bundled[name].decode("utf-8")
        return frozenset(meta.find_undeclared_variables(self.environment.parse(source)))

    def render(self, name: str, **variables: Any) -> str:
        """The template ``name`` (without ``.j2``) filled in."""
        template = self._templates.get(name)
        if template is None:
            try:
                template = self.environment.get_template(name + SUFFIX)
            except jinja2.TemplateNotFound:
                raise ConfigError(f"no prompt template named {name}{SUFFIX}") from None
            self._templates[name] = template
        try:
            return template.render(**variables).strip()
        except jinja2.TemplateError as error:  # e.g. an attribute the variable does not have
            where = self.overrides.get(name, name + SUFFIX)
            line = next(
                (
                    f.lineno
                    for f in reversed(traceback.extract_tb(error.__traceback__))
                    if f.filename == "<template>"
                ),
                None,
            )
            at = f":{line}" if line else ""
            raise ConfigError(f"{where}{at}: template error: {error}") from None


def _unknown_template(path: Path, names: list[str]) -> str:
    close = difflib.get_close_matches(path.name.removesuffix(SUFFIX), names, n=1)
    hint = f"did you mean {close[0]}{SUFFIX}? " if close else ""
    return (
        f"{path}: no template is called {path.name} and none includes it, so it would not be"
        f" used; {hint}the templates are {', '.join(n + SUFFIX for n in names)}"
    )


def _unknown_variables(
    path: Path, tree: jinja2.nodes.Template, unknown: set[str], allowed: frozenset[str]
) -> str:
    lines = {
        node.name: node.lineno
        for node in reversed(list(tree.find_all(jinja2.nodes.Name)))
        if node.name in unknown
    }  # the first line each is used on
    first = min(unknown, key=lambda name: (lines.get(name, 0), name))
    names = ", ".join(sorted(unknown, key=lambda name: (lines.get(name, 0), name)))
    may = ", ".join(sorted(allowed)) or "none"
    plural = "s" if len(unknown) > 1 else ""
    return (
        f"{path}:{lines.get(first, 1)}: unknown variable{plural} {names};"
        f" {path.name} may use: {may}"
    )


def _bundled() -> dict[str, bytes]:
    return {
        entry.name.removesuffix(SUFFIX): entry.read_bytes()
        for entry in resources.files("glan.prompts").iterdir()
        if entry.name.endswith(SUFFIX)
    }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read prompt template {path}: {error}") from None


def _decode(name: str, text: bytes, prompts: Prompts) -> str:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as error:
        where = prompts.overrides.get(name, name + SUFFIX)
        raise ConfigError(f"{where}: not UTF-8 text ({error.reason})") from None


def _digest(texts: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for file_name in sorted(name + SUFFIX for name in texts):
        digest.update(file_name.encode() + b"\0" + texts[file_name.removesuffix(SUFFIX)])
    return "p-" + digest.hexdigest()[:10]


@cache
def _prompts(directory: Path | None) -> Prompts:
    return Prompts(directory)


@cache
def prompts_for(directory: str | Path | None) -> Prompts:
    """The templates a run with ``prompts_dir=directory`` uses (read once per process; cheap to
    call per request)."""
    return _prompts(None if directory is None else Path(directory).expanduser().resolve())


def render(name: str, **variables: Any) -> str:
    """A bundled template filled in."""
    return prompts_for(None).render(name, **variables)


def export(directory: Path, *, force: bool = False) -> list[Path]:
    """Copy the bundled templates into ``directory``; existing files are kept unless ``force``."""
    names = sorted(_bundled())
    clashes = [directory / (n + SUFFIX) for n in names if (directory / (n + SUFFIX)).exists()]
    if clashes and not force:
        raise ConfigError(
            f"{directory} already holds {', '.join(p.name for p in clashes)}; pass --force to"
            " overwrite them"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name in names:
            source = resources.files("glan.prompts") / (name + SUFFIX)
            target = directory / (name + SUFFIX)
            with source.open("rb") as reader, target.open("wb") as writer:
                shutil.copyfileobj(reader, writer)
            written.append(target)
    except OSError as error:
        raise ConfigError(f"cannot write the templates to {directory}: {error}") from None
    return written


PROMPT_VERSION = prompts_for(None).version
