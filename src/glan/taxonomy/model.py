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

PATH_SEP = " > "
REVIEW_STATES = ("unreviewed", "kept", "dropped")
VOTES = ("keep", "drop")
BUNDLED_SOURCE = "glan/data/taxonomy.yaml (bundled default)"

ReviewState = Literal["unreviewed", "kept", "dropped"]
Vote = Literal["keep", "drop"]

_TOP_KEYS = ("name", "description", "fields")
_NODE_KEYS = ("name", "description", "review", "children")
_REVIEW_KEYS = ("state", "votes")


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
        problems = _problems(self.to_dict())
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
            raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise TaxonomyError(_yaml_message(source, exc), source=source) from None
        if raw is None:
            raise TaxonomyError.invalid(
                source, ["the file is empty; expected a mapping with a 'fields' list"]
            )
        problems = _problems(raw)
        if problems:
            raise TaxonomyError.invalid(source, problems)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:  # not expected: _problems checks everything pydantic does
            raise TaxonomyError.invalid(source, _translate(exc, raw)) from None

    # ------------------------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file format (keys in file order, nothing that was not set)."""
        data: dict[str, Any] = {}
        if self.name is not None:
            data["name"] = self.name
        if self.description is not None:
            data["description"] = self.description
        data["fields"] = [_node_dict(node) for node in self.fields]
        return data

    def to_yaml(self) -> str:
        """The taxonomy as YAML; ``Taxonomy.from_yaml(t.to_yaml()) == t``. Comments are not kept."""
        return yaml.dump(
            self.to_dict(),
            Dumper=_Dumper,
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
        """The disciplines named by ``names``; ``None`` or no names means all of them.

        A name matches a discipline's name, a full path ("Field > Sub-field > Discipline"), or an
        inner node's name or path (every discipline under it), ignoring case and surrounding
        whitespace. A bare name that occurs in several places selects all of them. The result is
        in file order without repeats. Unknown names raise ``TaxonomyError`` with suggestions.
        """
        if isinstance(names, str):
            names = [names]
        wanted = [n for n in (names or ()) if n and n.strip()]
        everything = self.disciplines()
        if not wanted:
            return everything

        index: dict[str, set[int]] = {}
        for i, discipline in enumerate(everything):
            for depth in range(1, len(discipline.path) + 1):
                prefix = discipline.path[:depth]
                index.setdefault(_norm(prefix[-1]), set()).add(i)
                index.setdefault(_norm(PATH_SEP.join(prefix)), set()).add(i)

        chosen: set[int] = set()
        unknown: list[str] = []
        for name in wanted:
            hits = index.get(_norm(name))
            if hits:
                chosen |= hits
            else:
                unknown.append(name)
        if unknown:
            messages = [self._unknown_message(name) for name in unknown]
            raise TaxonomyError("; ".join(messages), problems=messages)
        return [d for i, d in enumerate(everything) if i in chosen]

    def _unknown_message(self, name: str) -> str:
        query = _norm(name)
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
                live_names.setdefault(_norm(node.name), node.name)
                live_paths.setdefault(_norm(PATH_SEP.join(path)), PATH_SEP.join(path))
            else:
                gone.update({_norm(node.name), _norm(PATH_SEP.join(path))})
        if query in gone:
            return f"'{name.strip()}' has no disciplines left (dropped in review)"
        candidates = live_paths if ">" in name else live_names
        close = difflib.get_close_matches(query, list(candidates), n=3)
        hint = f" (did you mean: {', '.join(candidates[c] for c in close)}?)" if close else ""
        return f"unknown discipline '{name.strip()}'{hint}"


# --------------------------------------------------------------------------------- validation


def _problems(raw: Any) -> list[str]:
    """Everything wrong with plain taxonomy data, each with the path of the node concerned."""
    if not isinstance(raw, dict):
        return [f"the file must be a mapping with a 'fields' list, not {_kind(raw)}"]
    problems: list[str] = []
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"top level: {_unknown_key(key, _TOP_KEYS)}")
    for key in ("name", "description"):
        if raw.get(key) is not None and _as_text(raw[key]) is None:
            problems.append(f"top level: '{key}' must be text, not {_kind(raw[key])}")
    if "fields" not in raw:
        problems.append("no 'fields' list at the top level")
    elif not isinstance(raw["fields"], list):
        problems.append(f"'fields' must be a list of nodes, not {_kind(raw['fields'])}")
    elif not raw["fields"]:
        problems.append("'fields' is empty; a taxonomy needs at least one discipline")
    else:
        live, total = _check_siblings(raw["fields"], (), False, problems)
        if live == 0 and total > 0:  # total == 0 only with broken nodes, reported already
            problems.append("no disciplines: every discipline is dropped (review state 'dropped')")
    return problems


def _check_siblings(
    items: list[Any], parent: tuple[str, ...], parent_dropped: bool, problems: list[str]
) -> tuple[int, int]:
    """Check sibling nodes and below; return (disciplines left after dropping, all disciplines)."""
    seen: dict[str, str] = {}
    live = total = 0
    for number, item in enumerate(items, 1):
        path = (*parent, f"<{'child' if parent else 'field'} {number}>")
        if not isinstance(item, dict):
            hint = ""
            if isinstance(item, str) and item.strip():
                hint = f" (write '- name: {item.strip()}')"
            problems.append(
                f"{_fmt(path)}: a node must be a mapping with a 'name', not {_kind(item)}{hint}"
            )
            continue
        name = item.get("name")
        text = _as_text(name)
        if name is None:
            problems.append(f"{_fmt(path)}: node without a 'name'")
        elif text is None:
            problems.append(f"{_fmt(path)}: 'name' must be text, not {_kind(name)} (quote it)")
        elif not text.strip():
            problems.append(f"{_fmt(path)}: empty name")
        else:
            text = text.strip()
            path = (*parent, text)
            if ">" in text:
                problems.append(
                    f"{_fmt(path)}: a name must not contain '>' (it separates the parts of a path)"
                )
            key = text.casefold()
            if key in seen:
                where = _fmt(parent) if parent else "top level"
                kind = "children" if parent else "fields"
                names = f"'{text}'" if seen[key] == text else f"'{seen[key]}' and '{text}'"
                problems.append(f"{where}: two {kind} named {names} (sibling names must differ)")
            else:
                seen[key] = text
        for key in item:
            if key not in _NODE_KEYS:
                problems.append(f"{_fmt(path)}: {_unknown_key(key, _NODE_KEYS)}")
        description = item.get("description")
        if description is not None and _as_text(description) is None:
            problems.append(f"{_fmt(path)}: 'description' must be text, not {_kind(description)}")
        dropped = parent_dropped
        if item.get("review") is not None:
            dropped = _check_review(item["review"], path, problems) or dropped
        if "children" in item:
            children = item["children"]
            if children is None or children == []:
                problems.append(
                    f"{_fmt(path)}: has no children (a discipline must omit 'children')"
                )
            elif not isinstance(children, list):
                problems.append(
                    f"{_fmt(path)}: 'children' must be a list of nodes, not {_kind(children)}"
                )
            else:
                below = _check_siblings(children, path, dropped, problems)
                live, total = live + below[0], total + below[1]
        else:
            live, total = live + (not dropped), total + 1
    return live, total


def _check_review(review: Any, path: tuple[str, ...], problems: list[str]) -> bool:
    """Check a node's ``review`` mapping; return whether it drops the node."""
    where = _fmt(path)
    if not isinstance(review, dict):
        problems.append(
            f"{where}: 'review' must be a mapping like {{state: kept, votes: {{alice: keep}}}}, "
            f"not {_kind(review)}"
        )
        return False
    for key in review:
        if key not in _REVIEW_KEYS:
            problems.append(f"{where}: review: {_unknown_key(key, _REVIEW_KEYS)}")
    state = review.get("state", "unreviewed")
    if not isinstance(state, str) or state not in REVIEW_STATES:
        problems.append(
            f"{where}: review state {state!r} is not allowed (allowed: {', '.join(REVIEW_STATES)})"
        )
    votes = review.get("votes")
    if votes is not None and not isinstance(votes, dict):
        problems.append(
            f"{where}: review votes must be a mapping of reviewer to keep or drop, "
            f"not {_kind(votes)}"
        )
    elif votes:
        for reviewer, vote in votes.items():
            if _as_text(reviewer) is None:
                problems.append(f"{where}: reviewer name {reviewer!r} must be text")
            if not isinstance(vote, str) or vote not in VOTES:
                problems.append(
                    f"{where}: vote {vote!r} of reviewer '{reviewer}' is not allowed "
                    f"(allowed: {', '.join(VOTES)})"
                )
    return state == "dropped"


def _unknown_key(key: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key {str(key)!r} ({hint}allowed: {', '.join(allowed)})"


def _as_text(value: Any) -> str | None:
    """``value`` as text if it is text or a number (YAML reads ``1984`` as an int), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"true/false ({value!r}; quote it if it is a name)"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _fmt(path: tuple[str, ...]) -> str:
    return PATH_SEP.join(path)


def _norm(text: str) -> str:
    """Key for matching names and paths: case, surrounding and repeated whitespace ignored."""
    return ">".join(" ".join(part.split()).casefold() for part in text.split(">"))


def _node_dict(node: TaxonomyNode) -> dict[str, Any]:
    data: dict[str, Any] = {"name": node.name}
    if node.description is not None:
        data["description"] = node.description
    if node.review is not None:
        review: dict[str, Any] = _Flow(state=node.review.state)
        if node.review.votes:
            review["votes"] = _Flow(node.review.votes)
        data["review"] = review  # on one line, easy to edit: {state: kept, votes: {alice: keep}}
    if node.children is not None:
        data["children"] = [_node_dict(child) for child in node.children]
    return data


def _translate(exc: ValidationError, raw: Any) -> list[str]:
    """Pydantic errors as problems with node paths (a fallback; ``_problems`` normally wins)."""
    problems = []
    for error in exc.errors():
        loc, cursor, names, i = error["loc"], raw, [], 0
        while i + 1 < len(loc) and loc[i] in ("fields", "children") and isinstance(loc[i + 1], int):
            try:
                cursor = cursor[loc[i]][loc[i + 1]]
            except (KeyError, IndexError, TypeError):
                break
            name = cursor.get("name") if isinstance(cursor, dict) else None
            names.append(str(name).strip() if name else f"<item {loc[i + 1] + 1}>")
            i += 2
        where = _fmt(tuple(names)) or "top level"
        rest = ".".join(str(part) for part in loc[i:])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {rest + ': ' if rest else ''}{message}")
    return problems


# ------------------------------------------------------------------------------------ YAML


class _Flow(dict[str, Any]):
    """A mapping written in flow style, on one line."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes ``_Flow`` mappings on one line."""


_Dumper.add_representer(
    _Flow,
    lambda dumper, data: dumper.represent_mapping(
        "tag:yaml.org,2002:map", data.items(), flow_style=True
    ),
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_message(source: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{source}: not valid YAML{where}: {problem}"
