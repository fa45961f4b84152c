"""The base model: a Hugging Face Hub id, a local ``transformers`` directory, or a GGUF file.

A GGUF file is de-quantised once into a plain float32 checkpoint in a cache directory, because a
model loaded with ``gguf_file=`` keeps a GGUF quantizer attached even though its weights are plain
dense tensors: the Trainer refuses to fine-tune it ("purely quantized models") and
``save_pretrained`` refuses to save it. Rebuilt with ``from_config`` (without the
``quantization_config``) and ``load_state_dict``, it trains and saves like any model. GGUF
weights are an approximation of the original ones (Q4 here and there): use the original
checkpoint when there is one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glan.loop.errors import TrainError, require_train
from glan.loop.examples import PLAIN_TEMPLATE


@dataclass
class Base:
    """Where the base model is loaded from, and what it was given as."""

    name: str  # as given: hub id, directory or .gguf file
    path: str  # what from_pretrained reads: a hub id or a directory
    gguf: Path | None = None  # the GGUF file it was de-quantised from


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where de-quantised GGUF models are kept: ``cache_dir``, else $GLAN_CACHE_DIR, else
    $XDG_CACHE_HOME/glan (~/.cache/glan)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("GLAN_CACHE_DIR"):
        return Path(os.environ["GLAN_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "glan"


def _looks_local(name: str) -> bool:
    """A name that can only be a path (a hub id is ``owner/name`` or ``name``)."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def resolve(
    name: str, cache_dir: Path | None, progress: Callable[[str], None] | None = None
) -> Base:
    """Where to load ``name`` from; a GGUF file is de-quantised first (once, then cached)."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise TrainError(
                f"--base-model {name} is a file but not a .gguf; pass a GGUF file, a model"
                " directory or a Hugging Face Hub id"
            )
        return Base(name, str(dequantize(path, cache_root(cache_dir), progress)), path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return Base(name, str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve(str(ggufs[0]), cache_dir, progress)
        raise TrainError(
            f"--base-model {name} is a directory without a config.json (not a transformers"
            " model)" + (f"; name one of its {len(ggufs)} GGUF files" if ggufs else "")
        )
    if _looks_local(name):
        raise TrainError(f"--base-model {name}: no such file or directory")
    return Base(name, name)


def dequantize(gguf: Path, root: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The GGUF file as a plain float32 ``transformers`` checkpoint under ``root``; the same
    file (path, size, modification time) is converted once."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    target = root / "gguf" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    if progress:
        progress(f"de-quantising {gguf} into {target} (once; later runs reuse it)")
    torch = require_train("torch")
    transformers = require_train("transformers")
    require_train("gguf")
    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        source = str(gguf.parent)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        scratch.mkdir(parents=True)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(scratch)
        else:
            scratch.rename(target)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise TrainError(f"{gguf} cannot be loaded as a model: {error}") from None
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _unloadable(base: Base, error: Exception) -> TrainError:
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    where = "directory" if Path(base.path).is_dir() else "Hugging Face Hub id (or its local cache)"
    return TrainError(f"--base-model {base.name} cannot be loaded as a {where}: {first}")


def load_tokenizer(base: Base) -> tuple[Any, list[str]]:
    """The base model's tokenizer, ready for training, and what was changed to make it so:
    a pad token (the EOS) when it has none, a plain chat template when it has none."""
    transformers = require_train("transformers")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base.path)
    except (OSError, ValueError, KeyError) as error:
        raise _unloadable(base, error) from None
    changes = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainError(f"--base-model {base.name} has a tokenizer with no EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        changes.append("its tokenizer had no pad token: padding with EOS (masked by position)")
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE
        changes.append(
            "it has no chat template: glan's plain one (### User: / ### Assistant:, EOS after"
            " each reply) is used and saved with the model"
        )
    return tokenizer, changes


def load_model(base: Base) -> Any:
    """The base model in float32 (mixed precision, where a GPU has it, is the Trainer's)."""
    torch = require_train("torch")
    transformers = require_train("transformers")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as error:
        raise _unloadable(base, error) from None


def turn_end_ids(tokenizer: Any) -> list[int]:
    """The special tokens the chat template closes a reply with (``<|im_end|>``, ``<|eot_id|>``):
    generation must stop there, also when the model's EOS is another token."""
    marker = "GLAN-REPLY-END"
    try:
        text = str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                tokenize=False,
            )
        )
    except Exception:  # a template that wants something else (a system turn): nothing to add
        return []
    tail = text[text.rfind(marker) + len(marker) :]
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in added.items() if getattr(token, "special", False)}
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return [i for i in ids if i in special][:1]


def stop_on_turn_end(model: Any, tokenizer: Any) -> list[int]:
    """Make the saved generation config stop at the template's end of turn; returns the ids."""
    ends = turn_end_ids(tokenizer)
    config = model.generation_config
    current = config.eos_token_id
    known = [] if current is None else [current] if isinstance(current, int) else list(current)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in known:
        known.append(tokenizer.eos_token_id)
    ids = known + [i for i in ends if i not in known]
    if ids:
        config.eos_token_id = ids[0] if len(ids) == 1 else ids
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return ids
