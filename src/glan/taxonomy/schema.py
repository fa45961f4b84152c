"""A taxonomy file as data: what may be in it (every problem named by the path of its node), and
the strict YAML it is read from and written as (unknown keys and repeated keys are errors; review
states stay on one line)."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

if TYPE_CHECKING:
    from glan.taxonomy.model import TaxonomyNode

PATH_SEP = " > "
REVIEW_STATES = ("unreviewed", "kept", "dropped")
VOTES = ("keep", "drop")

_TOP_KEYS = ("name", "description", "fields")
_NODE_KEYS = ("name", "description", "review", "children")
_REVIEW_KEYS = ("state", "votes")


def problems_of(raw: Any) -> list[str]:
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


def norm(text: str) -> str:
    """Key for matching names and paths: case, surrounding and repeated whitespace ignored."""
    return ">".join(" ".join(part.split()).casefold() for part in text.split(">"))


def as_plain(node: TaxonomyNode) -> dict[str, Any]:
    data: dict[str, Any] = {"name": node.name}
    if node.description is not None:
        data["description"] = node.description
    if node.review is not None:
        review: dict[str, Any] = _Flow(state=node.review.state)
        if node.review.votes:
            review["votes"] = _Flow(node.review.votes)
        data["review"] = review  # on one line, easy to edit: {state: kept, votes: {alice: keep}}
    if node.children is not None:
        data["children"] = [as_plain(child) for child in node.children]
    return data


def translate(exc: ValidationError, raw: Any) -> list[str]:
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


class Dumper(yaml.SafeDumper):
    """SafeDumper that writes ``_Flow`` mappings on one line."""


Dumper.add_representer(
    _Flow,
    lambda dumper, data: dumper.represent_mapping(
        "tag:yaml.org,2002:map", data.items(), flow_style=True
    ),
)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
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


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_message(source: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{source}: not valid YAML{where}: {problem}"
