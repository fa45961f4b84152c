"""``glan train``: supervised fine-tuning on a glan export with TRL, loss on the assistant turns.

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
the GPUs). Training runs on a GPU when torch sees one (bf16 where it has it), else on the CPU in
float32. The model written is a plain ``transformers`` checkpoint (LoRA adapters merged into it),
so ``transformers`` and vLLM load it like the base model, with the tokenizer and chat template it
was trained with. ``glan-train.json`` beside it records the export (its run, curation and
settings), the base model, the settings as asked and as used, and the losses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from glan.loop.errors import TrainError, require_train
from glan.loop.examples import Encoded, describe_dropped, encode, read_export
from glan.loop.models import Base, load_model, load_tokenizer, resolve, stop_on_turn_end

MANIFEST = "glan-train.json"
PAPER_EPOCHS = 3
PAPER_LEARNING_RATE = 3e-6
PAPER_BATCH = 512
PAPER_WARMUP = 1000
LORA_LEARNING_RATE = 1e-4
MIN_STEPS_PER_EPOCH = 8
WARMUP_SHARE = 0.1

Progress = Callable[[str], None]


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


# -- training -------------------------------------------------------------------------------------


def train(
    dataset: str | Path,
    base_model: str,
    out: str | Path,
    *,
    settings: TrainSettings | None = None,
    progress: Progress | None = print,
) -> TrainResult:
    """Fine-tune ``base_model`` on the train split of the glan export ``dataset`` and write the
    model to ``out`` (replaced if it holds an earlier glan train model); see the module doc.

    ``base_model``: a Hugging Face Hub id, a local ``transformers`` directory or a .gguf file.
    ``progress``: called with each line to show (settings, then the loss per logging step);
    None for silence.
    """
    settings = settings or TrainSettings()
    say = progress or (lambda line: None)
    export_dir, target = Path(dataset), Path(out)
    _check_target(target)
    torch = require_train("torch")
    for module in ("transformers", "trl", "datasets", "accelerate"):
        require_train(module)
    if settings.lora:
        require_train("peft")
    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    cache = scratch / ".cache"
    with _quiet_libraries(), _threads(torch, settings.threads):
        try:
            scratch.mkdir(parents=True)
            export = read_export(export_dir, cache)
            say(_describe_export(export_dir, export.manifest, len(export.train), export.test_rows))
            base = resolve(base_model, settings.cache_dir, say)
            tokenizer, changes = load_tokenizer(base)
            for change in changes:
                say(f"base model: {change}")
            encoded = encode(export, tokenizer, settings.max_length, cache)
            say(_describe_encoded(encoded, settings.max_length))
            if encoded.examples == 0:
                raise TrainError(
                    f"{export_dir}: no row is left to train on ({describe_dropped(encoded)})"
                )
            devices = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
            schedule = plan(encoded.examples, settings, devices)
            for line in _describe_plan(schedule, settings):
                say(line)
            model = load_model(base)
            result = TrainResult(
                out=target,
                base_model=base_model,
                export=export_dir,
                run=export.manifest.get("run"),
                rows=encoded.rows,
                examples=encoded.examples,
                plan=schedule,
            )
            say(_describe_device(torch, model, settings))
            model = _fit(model, tokenizer, encoded, schedule, settings, scratch, result, say)
            say(f"saving to {target}")
            stop_on_turn_end(model, tokenizer)
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(scratch / "trainer", ignore_errors=True)
            _write_manifest(scratch, result, export.manifest, base, settings, encoded, torch)
            _install(scratch, target)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
    say(
        f"saved {target}: load it with transformers (AutoModelForCausalLM.from_pretrained) or"
        f" serve it with vLLM (vllm serve {target})"
    )
    return result


def _fit(
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
    from glan.loop.examples import collate

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
def _threads(torch: Any, threads: int | None) -> Iterator[None]:
    """torch's CPU threads for the work; on a busy 2-core machine 1 can beat 2."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
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


# -- what is said -------------------------------------------------------------------------------


def _describe_export(
    directory: Path, manifest: dict[str, Any], train_rows: int, test_rows: int
) -> str:
    curation = manifest.get("curation")
    curated = f"curation {curation}" if curation is not None else "not curated"
    held = f"; {test_rows:,} test pairs held out for GLAN-Test" if test_rows else ""
    layout = manifest["format"]
    converted = " (read as chat messages)" if layout != "messages" else ""
    return (
        f"export {directory} ({layout}{converted}, {manifest['to']}) of run"
        f" {manifest.get('run')}, {curated}: {train_rows:,} train pairs{held}"
    )


def _describe_encoded(encoded: Encoded, max_length: int) -> str:
    parts = [
        f"{encoded.examples:,} examples, {encoded.tokens:,} tokens, {encoded.trained_tokens:,}"
        " of them trained on (assistant turns)"
    ]
    if encoded.truncated:
        parts.append(f"{encoded.truncated:,} cut at --max-length {max_length}")
    if encoded.skipped_turns:
        parts.append(
            f"{encoded.skipped_turns:,} assistant turns not trained (the chat template renders"
            " them differently in context)"
        )
    if encoded.dropped:
        parts.append(describe_dropped(encoded))
    return "tokenised: " + "; ".join(parts)


def _describe_plan(schedule: Plan, settings: TrainSettings) -> list[str]:
    how = f"LoRA r={settings.lora_rank} (merged on save)" if settings.lora else "full fine-tuning"
    length = (
        f"{schedule.steps:,} steps (--max-steps)"
        if settings.max_steps
        else f"{schedule.epochs:g} epochs = {schedule.steps:,} steps"
    )
    lines = [
        f"{how}: {length}, batch {schedule.batch_size}"
        f" = {schedule.per_device_batch_size} a device x {schedule.gradient_accumulation}"
        f" accumulated{' x ' + str(schedule.devices) + ' GPUs' if schedule.devices > 1 else ''},"
        f" lr {schedule.learning_rate:g} cosine to 0 after {schedule.warmup_steps} warm-up steps"
    ]
    lines += [f"scaled: {line}" for line in schedule.scaled]
    return lines


def _describe_device(torch: Any, model: Any, settings: TrainSettings) -> str:
    weights = sum(p.numel() for p in model.parameters())
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        where = f"{torch.cuda.get_device_name(0)}, {'bf16' if bf16 else 'float32'}"
    else:
        threads = torch.get_num_threads()
        where = f"CPU, {threads} thread{'' if threads == 1 else 's'}, float32"
    return f"model {type(model).__name__}, {weights / 1e6:,.1f} M weights, on {where}"


# -- files ----------------------------------------------------------------------------------------


def _check_target(target: Path) -> None:
    """Only an empty directory or an earlier glan train model may be replaced."""
    if not target.exists():
        return
    if target.is_file() or (any(target.iterdir()) and not (target / MANIFEST).is_file()):
        raise TrainError(
            f"{target} exists and is not a glan train model; pass another --out or remove it"
        )


def _install(scratch: Path, target: Path) -> None:
    _check_target(target)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.rename(target)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _write_manifest(
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
