"""Errors a user can fix, and the optional libraries curation, export and report need."""

from __future__ import annotations

import importlib
from types import ModuleType


class CurationError(Exception):
    """Curation cannot run as asked (a benchmark file, a field, a language); says which and why."""


class MissingExtraError(ImportError):
    """An optional library is not installed; the message names the extra that brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional library, or say which ``pip install "glan[extra]"`` brings it.

    Optional libraries are imported only when a command needs them, so ``glan generate`` works
    without them installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f'{module} is not installed; install it with: pip install "glan[{extra}]"'
        ) from None
