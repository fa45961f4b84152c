"""The training itself: TRL's SFTTrainer on the encoded examples, and the libraries around it.

Training runs on a GPU when torch sees one (bf16 where it has it), else on the CPU in float32.
With LoRA the adapters are merged into the model it returns, so what is saved loads without
peft.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glan.loop.errors import require_train
from glan.loop.examples import Encoded, collate
from glan.loop.record import TrainResult
from glan.loop.schedule import Plan, TrainSettings

Progress = Callable[[str], None]


def fit(
    model: Any,
    tokenizer: Any,
    encoded: Encoded,
    schedule: Plan,
    settings: TrainSettings,
    scratch: Path,
    result: TrainResult,
    say: Progress,
) -> Any:
    """Train with TRL's SFTTrainer on the encoded examples; the trained model, merged if LoRA."""
    torch = require_train("torch")
    trl = require_train("trl")
    transformers = require_train("transformers")

    gpu = torch.cuda.is_available()
    options: dict[str, Any] = {
        "output_dir": str(scratch / "trainer"),
        "num_train_epochs": schedule.epochs,
        "max_steps": settings.max_steps or -1,
        "learning_rate": schedule.learning_rate,
        "lr_scheduler_type": "cosine",  # half a cosine: ends at exactly 0
        "warmup_steps": schedule.warmup_steps,
        "per_device_train_batch_size": schedule.per_device_batch_size,
        "gradient_accumulation_steps": schedule.gradient_accumulation,
        "max_length": settings.max_length,
        "logging_steps": schedule.logging_steps,
        "logging_first_step": True,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": settings.seed,
        "bf16": gpu and torch.cuda.is_bf16_supported(),  # TRL's default is bf16, even on a CPU
        "dataloader_pin_memory": gpu,
        "dataset_kwargs": {"skip_prepare_dataset": True},  # the examples are encoded already
    }
    names = {f.name for f in dataclasses.fields(trl.SFTConfig)}
    # recomputing activations saves GPU memory; on a CPU it only costs time (renamed in
    # transformers 5)
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else None
    options[checkpointing or "gradient_checkpointing"] = gpu
    peft_config = None
    if settings.lora:
        peft = require_train("peft")
        peft_config = peft.LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    trainer = trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(**options),
        train_dataset=encoded.dataset,
        processing_class=tokenizer,
        data_collator=collate(tokenizer.pad_token_id),
        peft_config=peft_config,
    )
    for callback in (transformers.PrinterCallback, transformers.ProgressCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(_progress_callback(transformers, schedule, result, say))
    if settings.lora:
        trainable, total = trainer.model.get_nb_trainable_parameters()
        say(f"LoRA r={settings.lora_rank}: {trainable:,} of {total:,} weights trained")
    started = time.perf_counter()
    trainer.train()
    result.seconds = time.perf_counter() - started
    if result.losses:
        say(
            f"trained {result.seconds:.1f} s: loss {result.first_loss:.4f} (first step) ->"
            f" {result.final_loss:.4f} (last)"
        )
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if settings.lora:
        trained = trained.merge_and_unload()  # a plain model: loads without peft
    return trained


def _progress_callback(
    transformers: Any, schedule: Plan, result: TrainResult, say: Progress
) -> Any:
    class ProgressLines(transformers.TrainerCallback):  # type: ignore[misc]
        """One line per logging step: step, epoch, loss, learning rate, time."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if not logs or "loss" not in logs:
                return
            step, total = state.global_step, state.max_steps or schedule.steps
            entry = {"step": step, "loss": float(logs["loss"])}
            if "learning_rate" in logs:
                entry["learning_rate"] = float(logs["learning_rate"])
            result.losses.append(entry)
            per_step = (time.perf_counter() - self.started) / max(1, step)
            left = per_step * (total - step)
            say(
                f"step {step}/{total}  epoch {float(logs.get('epoch') or state.epoch or 0):.2f}"
                f"  loss {entry['loss']:.4f}  lr {entry.get('learning_rate', 0):.2e}"
                f"  {per_step:.1f} s/step  left {_duration(left)}"
            )

    return ProgressLines()


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextmanager
def torch_threads(torch: Any, threads: int | None) -> Iterator[None]:
    """torch's CPU threads for the work; on a busy 2-core machine 1 can beat 2."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers, TRL and datasets say much that is no news to a glan user: their info
    messages, progress bars and deprecation notices are hushed; their warnings and errors show."""
    transformers = require_train("transformers")
    datasets = require_train("datasets")
    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing shards"
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            # deprecations inside the libraries (peft asks is_gradient_checkpointing): not the
            # user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()
