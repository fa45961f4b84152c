"""The schedule of ``glan train``: its settings, and the paper's plan scaled to the data.

The defaults are the paper's (GLAN, Li et al. 2024, section 3): 3 epochs, learning rate 3e-6, 512
pairs a batch, a cosine schedule that decays to 0 after 1000 warm-up steps. Small data scales
them, and the output says what was scaled and why:

- the batch is never larger than the data; with the default batch, it shrinks so that an epoch
  has at least ``MIN_STEPS_PER_EPOCH`` optimizer steps (500 pairs in batches of 512 would be one
  step an epoch);
- the warm-up is at most 10% of the steps (1000 warm-up steps of a 30-step run would never reach
  the peak learning rate); from 10,000 steps on it is the paper's 1000;
- LoRA (``lora=True``) defaults to a learning rate of 1e-4: the paper fine-tuned every weight,
  and 3e-6 barely moves an adapter.

The batch is ``per_device_batch_size`` rows a forward pass times gradient accumulation (times
the GPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

PAPER_EPOCHS = 3
PAPER_LEARNING_RATE = 3e-6
PAPER_BATCH = 512
PAPER_WARMUP = 1000
LORA_LEARNING_RATE = 1e-4
MIN_STEPS_PER_EPOCH = 8
WARMUP_SHARE = 0.1


class TrainSettings(BaseModel):
    """How to train; every default is the paper's or scales from it (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    lora: bool = False  # train LoRA adapters (merged on save) instead of every weight
    epochs: float = Field(default=PAPER_EPOCHS, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)  # None: 3e-6, or 1e-4 with LoRA
    batch_size: int | None = Field(default=None, ge=1)  # None: 512, scaled to small data
    per_device_batch_size: int = Field(default=4, ge=1)
    max_length: int = Field(default=2048, ge=8)
    max_steps: int | None = Field(default=None, ge=1)  # stop after this many optimizer steps
    threads: int | None = Field(default=None, ge=1)  # torch's CPU threads; None: torch's choice
    seed: int = 0
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    cache_dir: Path | None = None  # where GGUF files are de-quantised; None: ~/.cache/glan


@dataclass
class Plan:
    """The schedule as it will run: the paper's settings after scaling to the data."""

    examples: int
    learning_rate: float
    batch_size: int
    per_device_batch_size: int
    gradient_accumulation: int
    devices: int
    epochs: float
    steps_per_epoch: int
    steps: int
    warmup_steps: int
    logging_steps: int
    scaled: list[str] = field(default_factory=list)


def plan(examples: int, settings: TrainSettings, devices: int = 1) -> Plan:
    """The batch, steps and warm-up for ``examples`` training examples (see the module doc)."""
    scaled = []
    lr = settings.learning_rate or (LORA_LEARNING_RATE if settings.lora else PAPER_LEARNING_RATE)
    if settings.batch_size is None:
        batch = min(PAPER_BATCH, max(1, examples // MIN_STEPS_PER_EPOCH))
        why = f"{examples:,} examples would make under {MIN_STEPS_PER_EPOCH} steps an epoch"
        asked = f"the paper's batch of {PAPER_BATCH}"
    else:
        batch = min(settings.batch_size, examples)
        why = "a batch is never larger than the data"
        asked = f"--batch-size {settings.batch_size}"
    per_device = max(1, min(settings.per_device_batch_size, batch // devices))
    accumulation = max(1, batch // (per_device * devices))
    effective = per_device * devices * accumulation
    wanted = PAPER_BATCH if settings.batch_size is None else settings.batch_size
    if effective != wanted:
        rounding = ", a whole number of device batches" if effective != batch else ""
        scaled.append(f"{asked} -> {effective}: {why}{rounding}")
    if per_device < settings.per_device_batch_size:
        scaled.append(
            f"--per-device-batch-size {settings.per_device_batch_size} -> {per_device}: the"
            f" batch is {effective}"
        )
    micro_batches = math.ceil(examples / (per_device * devices))
    steps_per_epoch = max(1, math.ceil(micro_batches / accumulation))
    steps = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    warmup = min(PAPER_WARMUP, math.ceil(WARMUP_SHARE * steps))
    if warmup < PAPER_WARMUP:
        scaled.append(
            f"warm-up {PAPER_WARMUP} -> {warmup} steps: at most"
            f" {WARMUP_SHARE:.0%} of the {steps:,} steps"
        )
    return Plan(
        examples=examples,
        learning_rate=lr,
        batch_size=effective,
        per_device_batch_size=per_device,
        gradient_accumulation=accumulation,
        devices=devices,
        epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        warmup_steps=warmup,
        logging_steps=1 if steps <= 100 else 10,
        scaled=scaled,
    )
