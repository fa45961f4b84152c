"""The taxonomy of human knowledge that GLAN walks: fields > sub-fields > disciplines.

A taxonomy is a YAML file. The bundled default (``Taxonomy.load()``) holds the paper's 126
disciplines under its eight top-level fields; pass your own file to replace it.

File format::

    name: glan-default          # optional
    description: ...            # optional
    fields:                     # the top level: fields of human knowledge and capabilities
      - name: Humanities
        description: ...        # optional, on any node
        children:
          - name: History               # a node with children is a sub-field
            children:
              - name: American history  # a node without children is a discipline (a leaf)
              - name: European history
          - name: Philosophy            # depth varies: a discipline directly under a field is fine

Rules:

- Every node has a ``name``; ``description``, ``review`` and ``children`` are optional, and any
  other key is an error (so a typo such as ``childern`` is caught, not ignored).
- A node with ``children`` is an inner node (a field or sub-field); a node without ``children`` is
  a discipline. An inner node must have at least one child: to make a discipline, omit
  ``children`` rather than writing ``children: []``. A top-level node without children is a
  discipline that is its own field.
- Sibling names must differ (ignoring case), and no name may contain ``>``, which separates the
  parts of a path such as ``Humanities > History > American history``. The same discipline name
  may appear under different parents.
- Disciplines are generated in file order. A discipline's id is derived from its path, so renaming
  or moving a discipline gives it a new id (and new generated data); adding one leaves the others
  untouched.

Review state (written by the review step; optional)::

      - name: Folk dance
        review:
          state: unreviewed     # unreviewed | kept | dropped
          votes: {alice: keep, bob: drop}   # reviewer name -> keep | drop

A node without ``review`` was written by a person and counts as kept. A ``dropped`` node and its
whole subtree are left out of the disciplines; ``unreviewed`` nodes are still used until a
reviewer drops them. After dropping, at least one discipline must remain.

Selecting disciplines (``--discipline`` on the command line, ``Taxonomy.select`` in code) matches
a discipline's name, a full path (``Humanities > History > American history``) or an inner
node's name or path, which stands for every discipline under it (``Humanities``); matching
ignores case and surrounding whitespace.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glan.ids import stable_id
from glan.taxonomy.schema import (
    PATH_SEP,
    Dumper,
    StrictLoader,
    as_plain,
    norm,
    problems_of,
    translate,
    yaml_message,
)

BUNDLED_SOURCE = "glan/data/taxonomy.yaml (bundled default)"

ReviewState = Literal["unreviewed", "kept", "dropped"]
Vote = Literal["keep", "drop"]


class TaxonomyError(ValueError):
    """A taxonomy that cannot be used, or a selection it cannot satisfy.

    The message is complete on its own (file, node paths, every problem found), so a command line
    shows it as is, without a traceback. ``problems`` holds the individual problems.
    """

    def __init__(
        self, message: str, *, source: str | None = None, problems: Iterable[str] = ()
    ) -> None:
        super().__init__(message)
        self.source = source
        self.problems = list(problems) or [message]

    @classmethod
    def invalid(cls, source: str, problems: list[str]) -> TaxonomyError:
        if len(problems) == 1:
            message = f"{source}: invalid taxonomy: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"{source}: invalid taxonomy ({len(problems)} problems):\n{lines}"
        return cls(message, source=source, problems=problems)


# --------------------------------------------------------------------------------------- models


class Review(BaseModel):
    """Review state of a node drafted by a model: kept, dropped or still waiting for reviewers."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True)

    state: ReviewState = "unreviewed"
    votes: dict[str, Vote] = Field(default_factory=dict)

    @field_validator("votes", mode="before")
    @classmethod
    def _none_is_no_votes(cls, value: Any) -> Any:
        return {} if value is None else value


class TaxonomyNode(BaseModel):
    """A node of the tree: inner node (``children`` set) or discipline (``children`` None)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True)

    name: str
    description: str | None = None
    review: Review | None = None
    children: list[TaxonomyNode] | None = None

    @property
    def is_leaf(self) -> bool:
        return self.children is None

    @property
    def state(self) -> ReviewState:
        """The review state; a node without ``review`` is human-written and counts as kept."""
        return self.review.state if self.review is not None else "kept"


@dataclass(frozen=True)
class Discipline:
    """A leaf of the taxonomy, the unit GLAN generates subjects for."""

    field: str  # the top-level ancestor's name
    sub_field: str | None  # the names between field and discipline, joined with " > "; None if none
    name: str
    path: tuple[str, ...]  # names from the field down to this discipline
    description: str | None = None

    @property
    def id(self) -> str:
        return stable_id("discipline", *self.path)

    @property
    def path_str(self) -> str:
        return PATH_SEP.join(self.path)


class Taxonomy(BaseModel):
    """A validated taxonomy. Build it with ``load`` or ``from_yaml``; write it with ``to_yaml``."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True)

    name: str | None = None
    description: str | None = None
    fields: list[TaxonomyNode]

    @model_validator(mode="after")
    def _check_tree(self) -> Taxonomy:
        problems = problems_of(self.to_dict())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # ------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | PathLike[str] | None = None) -> Taxonomy:
        """Read a taxonomy file; ``None`` reads the bundled default."""
        if path is None:
            resource = resources.files("glan") / "data" / "taxonomy.yaml"
            return cls.from_yaml(resource.read_text(encoding="utf-8"), source=BUNDLED_SOURCE)
        file = Path(path).expanduser()
        source = str(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TaxonomyError(f"{source}: taxonomy file not found", source=source) from None
        except IsADirectoryError:
            message = f"{source}: is a directory, not a taxonomy file"
            raise TaxonomyError(message, source=source) from None
        except UnicodeDecodeError as exc:
            message = f"{source}: cannot read taxonomy file: not UTF-8 text ({exc.reason})"
            raise TaxonomyError(message, source=source) from None
        except OSError as exc:
            message = f"{source}: cannot read taxonomy file: {exc.strerror or exc}"
            raise TaxonomyError(message, source=source) from None
        return cls.from_yaml(text, source=source)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> Taxonomy:
        """Parse and validate YAML text; every problem found is listed in one ``TaxonomyError``."""
        try:
            raw = yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise TaxonomyError(yaml_message(source, exc), source=source) from None
        if raw is None:
            raise TaxonomyError.invalid(
                source, ["the file is empty; expected a mapping with a 'fields' list"]
            )
        problems = problems_of(raw)
        if problems:
            raise TaxonomyError.invalid(source, problems)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:  # not expected: _problems checks everything pydantic does
            raise TaxonomyError.invalid(source, translate(exc, raw)) from None

    # ------------------------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file format (keys in file order, nothing that was not set)."""
        data: dict[str, Any] = {}
        if self.name is not None:
            data["name"] = self.name
        if self.description is not None:
            data["description"] = self.description
        data["fields"] = [as_plain(node) for node in self.fields]
        return data

    def to_yaml(self) -> str:
        """The taxonomy as YAML; ``Taxonomy.from_yaml(t.to_yaml()) == t``. Comments are not kept."""
        return yaml.dump(
            self.to_dict(),
            Dumper=Dumper,
            sort_keys=False,
            allow_unicode=True,
            default_flow_style=False,
            width=100,
        )

    # ------------------------------------------------------------------------------- reading

    def walk(self) -> Iterator[tuple[tuple[str, ...], TaxonomyNode, bool]]:
        """Every node in file order as ``(path, node, dropped)``; ``dropped`` counts ancestors."""

        def visit(nodes: list[TaxonomyNode], parent: tuple[str, ...], dropped: bool):
            for node in nodes:
                path = (*parent, node.name)
                node_dropped = dropped or node.state == "dropped"
                yield path, node, node_dropped
                if node.children is not None:
                    yield from visit(node.children, path, node_dropped)

        yield from visit(self.fields, (), False)

    def disciplines(self) -> list[Discipline]:
        """The leaves in file order, minus dropped nodes and everything under them."""
        return [
            Discipline(
                field=path[0],
                sub_field=PATH_SEP.join(path[1:-1]) or None,
                name=node.name,
                path=path,
                description=node.description,
            )
            for path, node, dropped in self.walk()
            if node.is_leaf and not dropped
        ]

    def unreviewed(self) -> list[tuple[str, ...]]:
        """Paths of nodes still waiting for review (not counting nodes under a dropped node)."""
        return [
            path
            for path, node, dropped in self.walk()
            if not dropped and node.state == "unreviewed"
        ]

    def require_reviewed(self, source: str) -> None:
        """Raise ``TaxonomyError`` naming the waiting nodes if any node is still unreviewed."""
        waiting = self.unreviewed()
        if not waiting:
            return
        shown = "; ".join(PATH_SEP.join(path) for path in waiting[:3])
        more = f"; and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        nodes = "1 node is" if len(waiting) == 1 else f"{len(waiting)} nodes are"
        raise TaxonomyError(
            f"{source}: {nodes} not reviewed yet ({shown}{more}); vote with 'glan taxonomy review"
            f" {source} --reviewer NAME', apply the votes with 'glan taxonomy merge {source}',"
            " or pass --allow-unreviewed to generate from the draft as it is",
            source=source,
        )

    def select(self, names: Iterable[str] | None) -> list[Discipline]:
        """The disciplines named by ``names``; ``None`` means all of them.

        A name matches a discipline's name, a full path ("Field > Sub-field > Discipline"), or an
        inner node's name or path (every discipline under it), ignoring case and surrounding
        whitespace. A bare name that occurs in several places selects all of them. The result is
        in file order without repeats. Unknown names raise ``TaxonomyError`` with suggestions.

        An empty selection (``[]``, or only blank names: an unset shell variable) is an error, not
        the whole taxonomy: that is what ``None`` asks for, and it can cost a thousand times more.
        """
        everything = self.disciplines()
        if names is None:
            return everything
        if isinstance(names, str):
            names = [names]
        wanted = [n for n in names if n and n.strip()]
        if not wanted:
            raise TaxonomyError(
                "the selection of disciplines is empty: name at least one discipline, field or"
                " path, or select none at all (no disciplines option) for the whole taxonomy"
            )

        index: dict[str, set[int]] = {}
        for i, discipline in enumerate(everything):
            for depth in range(1, len(discipline.path) + 1):
                prefix = discipline.path[:depth]
                index.setdefault(norm(prefix[-1]), set()).add(i)
                index.setdefault(norm(PATH_SEP.join(prefix)), set()).add(i)

        chosen: set[int] = set()
        unknown: list[str] = []
        for name in wanted:
            hits = index.get(norm(name))
            if hits:
                chosen |= hits
            else:
                unknown.append(name)
        if unknown:
            messages = [self._unknown_message(name) for name in unknown]
            raise TaxonomyError("; ".join(messages), problems=messages)
        return [d for i, d in enumerate(everything) if i in chosen]

    def _unknown_message(self, name: str) -> str:
        query = norm(name)
        live_names: dict[str, str] = {}
        live_paths: dict[str, str] = {}
        gone: set[str] = set()
        leaves_below = {
            prefix
            for discipline in self.disciplines()
            for prefix in (discipline.path[:k] for k in range(1, len(discipline.path) + 1))
        }
        for path, node, _dropped in self.walk():
            if path in leaves_below:
                live_names.setdefault(norm(node.name), node.name)
                live_paths.setdefault(norm(PATH_SEP.join(path)), PATH_SEP.join(path))
            else:
                gone.update({norm(node.name), norm(PATH_SEP.join(path))})
        if query in gone:
            return f"'{name.strip()}' has no disciplines left (dropped in review)"
        candidates = live_paths if ">" in name else live_names
        close = difflib.get_close_matches(query, list(candidates), n=3)
        hint = f" (did you mean: {', '.join(candidates[c] for c in close)}?)" if close else ""
        return f"unknown discipline '{name.strip()}'{hint}"


# --------------------------------------------------------------------------------- validation
