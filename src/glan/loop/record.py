"""What ``glan train`` leaves: the result of a run, and the model directory with its record.

``glan-train.json`` beside the model records the export (its run, curation and settings), the
base model, the settings as asked and as used, and the losses. It is also what marks a directory
as a glan train model, the only kind a new run may replace.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from glan.loop.errors import TrainError
from glan.loop.examples import Encoded
from glan.loop.models import Base
from glan.loop.schedule import Plan, TrainSettings

MANIFEST = "glan-train.json"


@dataclass
class TrainResult:
    out: Path
    base_model: str
    export: Path
    run: str | None  # the run the export came from, as glan export was given it
    rows: int  # train rows read
    examples: int  # rows trained on (after dropping those that teach nothing)
    plan: Plan
    losses: list[dict[str, float]] = field(default_factory=list)  # step, loss, learning_rate
    seconds: float = 0.0

    @property
    def first_loss(self) -> float | None:
        return self.losses[0]["loss"] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1]["loss"] if self.losses else None


def check_target(target: Path) -> None:
    """Only an empty directory or an earlier glan train model may be replaced."""
    if not target.exists():
        return
    if target.is_file() or (any(target.iterdir()) and not (target / MANIFEST).is_file()):
        raise TrainError(
            f"{target} exists and is not a glan train model; pass another --out or remove it"
        )


def install(scratch: Path, target: Path) -> None:
    check_target(target)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.rename(target)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_manifest(
    scratch: Path,
    result: TrainResult,
    export_manifest: dict[str, Any],
    base: Base,
    settings: TrainSettings,
    encoded: Encoded,
    torch: Any,
) -> None:
    record = {
        "glan_version": _version("glan"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": export_manifest.get("run"),
        "curation": export_manifest.get("curation"),
        "export": {"dir": str(result.export.resolve()), "manifest": export_manifest},
        "base_model": {
            "name": base.name,
            "loaded_from": base.path,
            "gguf": str(base.gguf.resolve()) if base.gguf else None,
        },
        "settings": settings.model_dump(mode="json"),
        "plan": dataclasses.asdict(result.plan),
        "data": {
            "rows": encoded.rows,
            "examples": encoded.examples,
            "dropped": encoded.dropped,
            "truncated": encoded.truncated,
            "skipped_turns": encoded.skipped_turns,
            "tokens": encoded.tokens,
            "trained_tokens": encoded.trained_tokens,
        },
        "loss": {
            "first": result.first_loss,
            "final": result.final_loss,
            "history": result.losses,
        },
        "train_seconds": round(result.seconds, 3),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "versions": {
            name: _version(name)
            for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets")
        },
    }
    (scratch / MANIFEST).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
