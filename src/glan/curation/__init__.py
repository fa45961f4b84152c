"""Curation: dedup, decontamination and quality filters over a run, recorded beside the raw data.

``curate(run_dir, CurateConfig(...))`` is what ``glan curate`` runs; ``CurationLog`` reads the
curation in force (export and report use it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from glan.curation.errors import CurationError, MissingExtraError

if TYPE_CHECKING:
    from glan.curation.config import CurateConfig
    from glan.curation.runner import REASONS, curate
    from glan.run.curation import CuratedRows, CurationLog, CurationRun, Removal

# Imported when first used, so a screening worker imports only the checks (see glan/__init__.py).
_WHERE = {
    "REASONS": "glan.curation.runner",
    "CurateConfig": "glan.curation.config",
    "curate": "glan.curation.runner",
    "CuratedRows": "glan.run.curation",
    "CurationLog": "glan.run.curation",
    "CurationRun": "glan.run.curation",
    "Removal": "glan.run.curation",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'glan.curation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "REASONS",
    "CurateConfig",
    "CuratedRows",
    "CurationError",
    "CurationLog",
    "CurationRun",
    "MissingExtraError",
    "Removal",
    "curate",
]
