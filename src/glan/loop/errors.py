"""Errors a user can fix while training, and the optional libraries training needs."""

from __future__ import annotations

from types import ModuleType

from glan.curation.errors import require


class TrainError(Exception):
    """Training cannot run as asked (the export, the base model, the output directory); the
    message says what is wrong and what to do."""


def require_train(module: str) -> ModuleType:
    """Import one of the training libraries, or say that ``glan[train]`` brings it."""
    return require(module, "train")
