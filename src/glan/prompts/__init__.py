"""Prompt templates: plain Jinja2 files beside this module, so a user can read and change them.

``PROMPT_VERSION`` is a hash of every template's text: it is recorded with each row and changes
whenever a template does.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import jinja2


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("glan", "prompts"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(name: str, **variables: Any) -> str:
    """The template ``name`` (without ``.j2``) filled in."""
    return _environment().get_template(f"{name}.j2").render(**variables).strip()


def _version() -> str:
    digest = hashlib.sha256()
    for entry in sorted(resources.files("glan.prompts").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".j2"):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return "p-" + digest.hexdigest()[:10]


PROMPT_VERSION = _version()
