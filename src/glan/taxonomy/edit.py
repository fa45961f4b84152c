"""Changing a taxonomy file: find a node, add, remove or rename one, and write the file safely.

Every change goes through ``edit_file``: it takes a lock, reads the file as it is now, applies
the change, checks the result and replaces the file atomically. Two reviewers voting in the same
file at once therefore never undo each other's decisions, and a crash never leaves half a file.

What a change costs in a run directory: a discipline's id is derived from its path, so adding a
node leaves every other discipline's stored work in place (only the new one is generated);
removing one sends nothing (its stored rows stay in the run, see ``glan status``); renaming or
moving a discipline gives it a new id, so it is generated afresh.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from glan.taxonomy.model import Review, Taxonomy, TaxonomyError, TaxonomyNode
from glan.taxonomy.schema import PATH_SEP, norm

try:  # POSIX; elsewhere the file is still replaced atomically, only not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
NodePath = tuple[str, ...]


# ----------------------------------------------------------------------------------- finding


def fmt(path: NodePath) -> str:
    return PATH_SEP.join(path)


def node_at(taxonomy: Taxonomy, path: NodePath) -> TaxonomyNode | None:
    """The node at exactly ``path`` (names compared ignoring case and spacing), or None."""
    nodes: list[TaxonomyNode] | None = taxonomy.fields
    found: TaxonomyNode | None = None
    for name in path:
        if nodes is None:
            return None
        key = norm(name)
        found = next((n for n in nodes if norm(n.name) == key), None)
        if found is None:
            return None
        nodes = found.children
    return found


def locate(taxonomy: Taxonomy, query: str) -> NodePath:
    """The one node ``query`` names: a full path ("Humanities > History"), the end of one
    ("History > American history") or a bare name, matching one node. Dropped nodes count.
    Unknown or ambiguous names raise ``TaxonomyError``."""
    if not query or not query.strip():
        raise TaxonomyError("empty node name")
    key = norm(query.strip())
    parts = tuple(key.split(">"))
    paths = [path for path, _node, _dropped in taxonomy.walk()]
    exact = [p for p in paths if norm(fmt(p)) == key]
    if exact:
        return exact[0]
    named = [p for p in paths if tuple(norm(n) for n in p[-len(parts) :]) == parts]
    if len(named) == 1:
        return named[0]
    if named:
        where = "; ".join(f"'{fmt(p)}'" for p in named)
        raise TaxonomyError(f"'{query.strip()}' is ambiguous, it names {where}: give the full path")
    candidates = {norm(fmt(p)) if ">" in query else norm(p[-1]): p for p in paths}
    close = difflib.get_close_matches(key, list(candidates), n=3)
    hint = (
        f" (did you mean: {', '.join(repr(fmt(candidates[c])) for c in close)}?)" if close else ""
    )
    raise TaxonomyError(f"no node named '{query.strip()}' in the taxonomy{hint}")


def siblings_of(taxonomy: Taxonomy, path: NodePath) -> list[TaxonomyNode]:
    """The list holding the node at ``path`` (the fields, or its parent's children)."""
    if len(path) == 1:
        return taxonomy.fields
    parent = node_at(taxonomy, path[:-1])
    assert parent is not None and parent.children is not None, fmt(path)
    return parent.children


def clean_name(name: str) -> str:
    """A node name as stored: trimmed, inner whitespace collapsed; empty or '>' is an error."""
    text = " ".join(name.split())
    if not text:
        raise TaxonomyError("a node name must not be empty")
    if ">" in text:
        raise TaxonomyError(
            f"'{text}': a name must not contain '>' (it separates the parts of a path);"
            " to put a node under another, use --under"
        )
    return text


def _clash(
    nodes: list[TaxonomyNode], name: str, where: str, skip: TaxonomyNode | None = None
) -> None:
    for node in nodes:
        if node is not skip and norm(node.name) == norm(name):
            raise TaxonomyError(f"{where} already has a node named '{node.name}'")


# ----------------------------------------------------------------------------------- changes


def add_node(
    taxonomy: Taxonomy,
    name: str,
    under: str | None = None,
    *,
    description: str | None = None,
    unreviewed: bool = False,
    make_sub_field: bool = False,
) -> NodePath:
    """Add a node (a discipline) under ``under`` (a path or unique name; None: a new field).

    A node a person adds counts as kept; ``unreviewed`` marks it for the reviewers instead.
    Adding under a discipline turns that discipline into a sub-field, which stops generating
    the discipline itself, so it needs ``make_sub_field``.
    """
    name = clean_name(name)
    review = Review(state="unreviewed") if unreviewed else None
    node = TaxonomyNode(name=name, description=description or None, review=review)
    if under is None:
        _clash(taxonomy.fields, name, "the top level")
        taxonomy.fields.append(node)
        return (name,)
    parent_path = locate(taxonomy, under)
    parent = node_at(taxonomy, parent_path)
    assert parent is not None
    if parent.children is None:
        if not make_sub_field:
            raise TaxonomyError(
                f"'{fmt(parent_path)}' is a discipline: a child would make it a sub-field, and"
                f" '{parent.name}' itself would no longer be generated; add '{name}' beside it"
                f" (--under '{fmt(parent_path[:-1]) or 'nothing, as a field'}') or pass"
                " --make-sub-field"
            )
        parent.children = []
    _clash(parent.children, name, f"'{fmt(parent_path)}'")
    parent.children.append(node)
    return (*parent_path, name)


def remove_node(taxonomy: Taxonomy, query: str) -> tuple[NodePath, int]:
    """Remove a node and everything under it; returns its path and how many disciplines went."""
    path = locate(taxonomy, query)
    nodes = siblings_of(taxonomy, path)
    if len(nodes) == 1 and len(path) > 1:
        parent = fmt(path[:-1])
        raise TaxonomyError(
            f"'{fmt(path)}' is the only node under '{parent}', which would be left empty;"
            f" remove '{parent}' instead"
        )
    node = node_at(taxonomy, path)
    assert node is not None
    gone = sum(1 for p, n, _ in taxonomy.walk() if p[: len(path)] == path and n.is_leaf)
    nodes.remove(node)
    return path, gone


def rename_node(taxonomy: Taxonomy, query: str | NodePath, new_name: str) -> NodePath:
    """Rename a node in place (its children move with it); returns the new path."""
    path = query if isinstance(query, tuple) else locate(taxonomy, query)
    new_name = clean_name(new_name)
    node = node_at(taxonomy, path)
    if node is None:
        raise TaxonomyError(f"no node at '{fmt(path)}'")
    where = f"'{fmt(path[:-1])}'" if len(path) > 1 else "the top level"
    _clash(siblings_of(taxonomy, path), new_name, where, skip=node)
    node.name = new_name
    return (*path[:-1], new_name)


# ----------------------------------------------------------------------------------- files


def read(path: Path) -> Taxonomy:
    return Taxonomy.load(path)


def write(taxonomy: Taxonomy, path: Path, *, header: str = "") -> None:
    """Check ``taxonomy`` and replace ``path`` with it atomically (a crash leaves the old file)."""
    text = taxonomy.to_yaml()
    Taxonomy.from_yaml(text, source=str(path))  # every problem, with node paths, before writing
    directory = path.parent if str(path.parent) else Path(".")
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as error:
        raise TaxonomyError(f"{path}: cannot write the taxonomy file: {error}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(header + text)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise TaxonomyError(f"{path}: cannot write the taxonomy file: {error}") from None


def leading_comments(path: Path) -> str:
    """The comment lines at the top of a file, kept when the file is rewritten."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return ""
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return "".join(header)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (a hidden ``.NAME.lock`` file beside it)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path = path.parent / f".{path.name}.lock"
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 - held across the yield
    except OSError:  # a read-only directory: nothing to lock against, writing will fail clearly
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def edit_file(path: Path, change: Callable[[Taxonomy], T]) -> T:
    """Apply ``change`` to the file as it is now, under a lock; write it only if it succeeds."""
    with locked(path):
        taxonomy = read(path)
        result = change(taxonomy)
        write(taxonomy, path, header=leading_comments(path))
        return result
