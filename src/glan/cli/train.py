"""``glan train``: fine-tune a model on a glan export (``glan.loop.train``).

Its options are ``TrainSettings``' fields (types and defaults read from the model), less the ones
only the Python API takes (LoRA rank and alpha, the GGUF cache), with ``--lr`` for
``learning_rate``. ``glan eval`` (GLAN-Test) will sit beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from glan.cli.common import (
    REQUIRED,
    argument,
    command,
    default_is,
    field_option,
    option,
    out,
    takes,
    user_errors,
)
from glan.loop.schedule import MIN_STEPS_PER_EPOCH, TrainSettings
from glan.loop.train import train

NAMES = {"learning_rate": "lr"}  # the option of each field that is named otherwise

TRAIN_OPTIONS = [
    argument(
        "export",
        Path,
        help="A directory glan export wrote (any layout; jsonl, parquet or hf). Its train split is trained on; its test split is held out.",
        show_default=False,
    ),
    option(
        "base_model",
        str,
        "--base-model",
        "-m",
        default=REQUIRED,
        help="The model to fine-tune: a Hugging Face Hub id (Qwen/Qwen2.5-0.5B), a local transformers directory, or a .gguf file (de-quantised once into ~/.cache/glan, or $GLAN_CACHE_DIR).",
        show_default=False,
    ),
    option(
        "out",
        Path,
        "--out",
        "-o",
        default=REQUIRED,
        help="Directory to write the model to (replaced if it holds an earlier glan train model).",
        show_default=False,
    ),
    field_option(
        TrainSettings,
        "lora",
        "--lora",
        help="Train LoRA adapters (rank 16 on every linear layer) instead of every weight; they are merged into the model on save, so it loads like any other.",
    ),
    field_option(TrainSettings, "epochs", help="Passes over the train split (the paper: 3)."),
    option(
        "lr",
        float | None,
        help=f"Peak learning rate, reached after the warm-up and decayed to 0 on a cosine. {default_is('3e-6, the paper; 1e-4 with --lora')}",
        show_default=False,
    ),
    option(
        "batch_size",
        int | None,
        help=f"Pairs per optimizer step (per-device batch x gradient accumulation). Never more than the data; by default also small enough for {MIN_STEPS_PER_EPOCH} steps an epoch. {default_is('512, the paper')}",
        show_default=False,
    ),
    field_option(
        TrainSettings,
        "per_device_batch_size",
        help="Pairs per forward pass; lower it when memory runs out (the batch stays the same, accumulated over more passes).",
    ),
    field_option(
        TrainSettings,
        "max_length",
        help="Tokens per example; longer ones are cut at the end, and one whose replies all start past it is dropped (both counted).",
    ),
    option(
        "max_steps",
        int | None,
        help="Stop after this many optimizer steps, whatever --epochs says (the schedule fits them). \\[default: --epochs]",
        show_default=False,
    ),
    option(
        "threads",
        int | None,
        help="CPU threads for torch; on a busy machine fewer than the cores can be faster. \\[default: torch's choice]",
        show_default=False,
    ),
    field_option(TrainSettings, "seed", help="Seed of the shuffling and the initial weights."),
]


def register(app: typer.Typer) -> None:
    command(app, "train")(train_command)


@takes(TRAIN_OPTIONS)
def train_command(
    export: Path, base_model: str, out: Path, lr: float | None, **options: Any
) -> None:
    """Fine-tune a model on a glan export: loss on the assistant turns only, the paper's settings.

    The defaults are the GLAN paper's: 3 epochs, learning rate 3e-6, 512 pairs a batch, a cosine
    schedule to 0 after 1000 warm-up steps. Small data scales them (the batch never exceeds the
    data, the warm-up is at most 10% of the steps), and the output says what was scaled.

    Every assistant turn of a row is trained on; the system prompt, the user turns and the
    template's role headers are masked, with the base model's own chat template. Runs on a GPU
    when torch sees one, else on the CPU.

    OUT is a plain transformers checkpoint (LoRA merged in) with its tokenizer and chat template:
    AutoModelForCausalLM.from_pretrained(OUT) and vllm serve OUT load it. OUT/glan-train.json
    records the run, curation and export it was trained on, the base model, the settings and the
    losses.

    Needs pip install "glan\\[train]" (torch, transformers, trl, peft). Make the export with
    glan export --test-per-discipline to keep a held-out split for GLAN-Test.
    """
    stopped = f"training stopped; nothing was written to {out}"
    with user_errors(names=NAMES, stopped=stopped):
        settings = TrainSettings(learning_rate=lr, **options)
        train(export, base_model, out, settings=settings, progress=_say)


def _say(line: str) -> None:
    out.print(escape(line))
