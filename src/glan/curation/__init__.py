"""Curation: dedup, decontamination and quality filters over a run, recorded beside the raw data.

``curate(run_dir, CurateConfig(...))`` is what ``glan curate`` runs; ``CurationLog`` reads the
curation in force (export and report use it).
"""

from glan.curation.errors import CurationError, MissingExtraError
from glan.curation.runner import REASONS, CurateConfig, curate
from glan.run.curation import CuratedRows, CurationLog, CurationRun, Removal

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
