"""``glan train``: supervised fine-tuning on a glan export with TRL, loss on the assistant turns.

``train`` reads the export (``glan.loop.examples``), loads the base model (``glan.loop.models``),
plans the schedule (``glan.loop.schedule``: the paper's settings, scaled to small data), trains
(``glan.loop.trainer``) and saves, saying each step as it goes. The model written is a plain
``transformers`` checkpoint (LoRA adapters merged into it), so ``transformers`` and vLLM load it
like the base model, with the tokenizer and chat template it was trained with; the record beside
it is ``glan.loop.record``'s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from glan.loop.errors import TrainError, require_train
from glan.loop.examples import Encoded, describe_dropped, encode, read_export
from glan.loop.models import load_model, load_tokenizer, resolve, stop_on_turn_end
from glan.loop.record import TrainResult, check_target, install, write_manifest
from glan.loop.schedule import Plan, TrainSettings, plan
from glan.loop.trainer import Progress, fit, quiet_libraries, torch_threads


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
    check_target(target)
    torch = require_train("torch")
    for module in ("transformers", "trl", "datasets", "accelerate"):
        require_train(module)
    if settings.lora:
        require_train("peft")
    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    cache = scratch / ".cache"
    with quiet_libraries(), torch_threads(torch, settings.threads):
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
            model = fit(model, tokenizer, encoded, schedule, settings, scratch, result, say)
            say(f"saving to {target}")
            stop_on_turn_end(model, tokenizer)
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(scratch / "trainer", ignore_errors=True)
            write_manifest(scratch, result, export.manifest, base, settings, encoded, torch)
            install(scratch, target)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
    say(
        f"saved {target}: load it with transformers (AutoModelForCausalLM.from_pretrained) or"
        f" serve it with vLLM (vllm serve {target})"
    )
    return result


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
