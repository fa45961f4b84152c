"""What the trainer learns from: a glan export read back as conversations, each rendered with the
base model's chat template and tokenised, with labels on the assistant turns only.

**One example per row, loss on every assistant turn.** A row's conversation is rendered once.
For each assistant turn the template is also asked for the conversation up to that turn with the
generation prompt (``<|im_start|>assistant\\n``), and up to the end of the turn; when both are
prefixes of the whole (the template renders the conversation turn by turn, as almost all do),
the tokens between them, the reply and the template's end of turn, get labels and every other
token (system prompt, user turns, role headers) gets -100. A template that renders a turn
differently in the middle of a conversation (one that drops earlier reasoning, say) leaves that
turn untrained, and a row with no turn left is dropped and counted. This works with any chat
template; TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers that most templates
lack, and its prompt/completion layout trains the last turn only. glan's own rows are one
question and one answer, where all three agree.

**Truncation** keeps the start (``max_length`` tokens); a row whose assistant turns all start
past it teaches nothing and is dropped, and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glan.loop.errors import TrainError, require_train
from glan.publish.export import MANIFEST
from glan.publish.layouts import FORMATS

IGNORE = -100  # the label of a token that is not trained on
ENCODED_COLUMNS = ("input_ids", "labels", "problem", "truncated", "skipped_turns", "tokens")
ENCODED_COLUMNS += ("trained",)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ROLES |= {"system": "system"}
# why a row teaches nothing (the "problem" of an encoded row; "" when it is fine)
PROBLEMS = {
    "no_assistant": "no assistant turn",
    "template": "the chat template renders their assistant turns differently in context",
    "too_long": "their assistant turns start after --max-length tokens",
}

# A base model without a chat template gets this one: plain text, no new tokens, and the
# end-of-sequence token closing each reply, so that generation stops there and the reply's
# trained tokens are the same mid-conversation and at its end.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{{ '### ' + (message['role'] | capitalize) + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\\n\\n' }}{% endif %}{{ '### Assistant:\\n' }}"
    "{% endif %}"
)


# -- the export ---------------------------------------------------------------------------------


@dataclass
class Export:
    """A glan export: its manifest, and its train split as a ``datasets.Dataset``."""

    directory: Path
    manifest: dict[str, Any]
    train: Any  # datasets.Dataset
    test_rows: int

    @property
    def layout(self) -> str:
        return str(self.manifest["format"])


def read_manifest(directory: Path) -> dict[str, Any]:
    """The export's glan-export.json: which run, curation, layout and files it holds."""
    if not directory.is_dir():
        raise TrainError(f"{directory} is not a directory; pass the --out of glan export")
    path = directory / MANIFEST
    if not path.is_file():
        raise TrainError(
            f"{directory} is not a glan export (no {MANIFEST} in it); pass the directory that"
            " glan export wrote"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainError(f"{path} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        raise TrainError(
            f"{path} names no layout glan train reads (format: {manifest.get('format')!r};"
            f" expected one of {', '.join(FORMATS)})"
            if isinstance(manifest, dict)
            else f"{path} is not a glan export manifest"
        )
    if manifest.get("to") not in ("jsonl", "parquet", "hf"):
        raise TrainError(f"{path}: unknown target {manifest.get('to')!r}")
    return manifest


def read_export(directory: str | Path, cache_dir: Path) -> Export:
    """The train split of an export (the test split is GLAN-Test's, never trained on)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    splits = manifest.get("splits") or {}
    if not splits.get("train"):
        raise TrainError(
            f"{directory} has no training pairs ({_splits(splits)}); export with a smaller"
            " --test-per-discipline, or generate more"
        )
    datasets = require_train("datasets")
    datasets.disable_progress_bars()
    column = {"messages": "messages", "sharegpt": "conversations"}.get(manifest["format"])
    try:
        if manifest["to"] == "hf":
            train = datasets.load_from_disk(str(directory))["train"]
        else:
            suffix = "jsonl" if manifest["to"] == "jsonl" else "parquet"
            files = sorted(
                str(directory / name)
                for name in manifest.get("files") or []
                if Path(name).name.startswith("train") and name.endswith(f".{suffix}")
            )
            if not files:
                raise TrainError(f"{directory} lists no train files in {MANIFEST}")
            builder = "json" if suffix == "jsonl" else "parquet"
            train = datasets.load_dataset(
                builder, data_files={"train": files}, split="train", cache_dir=str(cache_dir)
            )
    except (OSError, ValueError, KeyError) as error:
        raise TrainError(
            f"{directory} cannot be read as a {manifest['to']} export: {error}"
        ) from None
    needed = [column] if column else ["instruction", "input", "output"]
    missing = [name for name in needed if name not in train.column_names]
    if missing:
        raise TrainError(
            f"{directory} is a {manifest['format']} export without the {', '.join(missing)}"
            " column; export it again with glan export"
        )
    if len(train) == 0:
        raise TrainError(f"{directory} has no training pairs")
    train = train.select_columns(needed)
    return Export(directory, manifest, train, int(splits.get("test") or 0))


def _splits(splits: dict[str, Any]) -> str:
    return ", ".join(f"{name} {count}" for name, count in splits.items()) or "no splits"


def conversation(row: dict[str, Any], layout: str) -> list[dict[str, str]]:
    """A row of any glan layout as chat messages: sharegpt and alpaca are converted."""
    if layout == "messages":
        return [
            {"role": str(m["role"]), "content": str(m["content"] or "")}
            for m in row["messages"] or []
        ]
    if layout == "sharegpt":
        return [
            {"role": ROLES.get(str(m["from"]), str(m["from"])), "content": str(m["value"] or "")}
            for m in row["conversations"] or []
        ]
    question = "\n\n".join(str(part) for part in (row["instruction"], row["input"]) if part)
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": str(row["output"] or "")},
    ]


# -- tokens and labels --------------------------------------------------------------------------


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Encoder:
    """Chat messages -> ``input_ids`` and ``labels`` (the assistant turns' tokens; -100 on the
    rest); see the module doc."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def render(self, messages: list[dict[str, str]], prompt: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            )
        )

    def __call__(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return self.many([messages])[0]

    def many(self, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
        """Each conversation encoded; the texts of a batch are tokenised in one call (a fast
        tokenizer spreads it over the CPU's threads)."""
        texts: list[str] = []

        def add(text: str) -> int:
            texts.append(text)
            return len(texts) - 1

        plans: list[tuple[int, list[tuple[int, int | None]], int] | None] = []
        for messages in conversations:
            turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            if not turns:
                plans.append(None)
                continue
            whole = self.render(messages, prompt=False)
            spans: list[tuple[int, int | None]] = []
            for i in turns:
                before = self.render(messages[:i], prompt=True)
                through = whole if i == len(messages) - 1 else self.render(messages[: i + 1], False)
                if through.startswith(before) and whole.startswith(through):
                    spans.append((add(before), None if through == whole else add(through)))
            plans.append((add(whole), spans, len(turns)))
        # the template writes the special tokens (a BOS among them) itself
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [self._labelled(plan, ids) for plan in plans]

    def _labelled(
        self, plan: tuple[int, list[tuple[int, int | None]], int] | None, ids: list[list[int]]
    ) -> dict[str, Any]:
        if plan is None:
            return self._nothing("no_assistant")
        whole, spans, turns = plan
        input_ids = list(ids[whole])
        labels = [IGNORE] * len(input_ids)
        trained = 0
        for before, through in spans:
            start = _common_prefix(ids[before], input_ids)
            end = len(input_ids) if through is None else _common_prefix(ids[through], input_ids)
            if end > start:
                labels[start:end] = input_ids[start:end]
                trained += 1
        if not trained:
            return self._nothing("template")
        truncated = len(input_ids) > self.max_length
        input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE for label in labels):
            return self._nothing("too_long")
        return {
            "input_ids": input_ids,
            "labels": labels,
            "problem": "",
            "truncated": truncated,
            "skipped_turns": turns - trained,
            "tokens": len(input_ids),
            "trained": sum(1 for label in labels if label != IGNORE),
        }

    @staticmethod
    def _nothing(problem: str) -> dict[str, Any]:
        return {
            "input_ids": [],
            "labels": [],
            "problem": problem,
            "truncated": False,
            "skipped_turns": 0,
            "tokens": 0,
            "trained": 0,
        }


@dataclass
class Encoded:
    """The tokenised training set and what happened on the way."""

    dataset: Any  # datasets.Dataset of input_ids and labels
    rows: int  # rows read
    dropped: dict[str, int] = field(default_factory=dict)  # by problem
    truncated: int = 0
    skipped_turns: int = 0  # assistant turns not trained (the template renders them otherwise)
    tokens: int = 0
    trained_tokens: int = 0

    @property
    def examples(self) -> int:
        return len(self.dataset)


def encode(
    export: Export,
    tokenizer: Any,
    max_length: int,
    cache_dir: Path,
) -> Encoded:
    """Every train row of ``export`` encoded; rows that teach nothing dropped and counted."""
    encoder = Encoder(tokenizer, max_length)
    layout = export.layout

    def encode_rows(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        columns = list(batch)
        values = zip(*batch.values(), strict=True)
        rows = [dict(zip(columns, row, strict=True)) for row in values]
        encoded = encoder.many([conversation(row, layout) for row in rows])
        return {key: [e[key] for e in encoded] for key in ENCODED_COLUMNS}

    cache_dir.mkdir(parents=True, exist_ok=True)
    mapped = export.train.map(
        encode_rows,
        batched=True,
        batch_size=1000,
        remove_columns=export.train.column_names,
        cache_file_name=str(cache_dir / "encoded.arrow"),
        new_fingerprint="glan-train-encoded",  # the tokenizer is not worth hashing
    )
    # the counts come from small columns only: the token lists stay on disk
    stats = mapped.select_columns(["problem", "truncated", "skipped_turns", "tokens", "trained"])
    result = Encoded(dataset=None, rows=len(mapped))
    for batch in stats.iter(batch_size=10_000):
        for problem in batch["problem"]:
            if problem:
                result.dropped[problem] = result.dropped.get(problem, 0) + 1
        result.truncated += sum(batch["truncated"])
        result.skipped_turns += sum(batch["skipped_turns"])
        result.tokens += sum(batch["tokens"])
        result.trained_tokens += sum(batch["trained"])
    kept = mapped
    if result.dropped:
        kept = mapped.filter(
            lambda problem: not problem,
            input_columns="problem",
            cache_file_name=str(cache_dir / "kept.arrow"),
        )
    result.dataset = kept.select_columns(["input_ids", "labels"])
    return result


def describe_dropped(encoded: Encoded) -> str:
    """Why rows were dropped, in words: '3 rows dropped: 2 whose ..., 1 with ...'."""
    parts = [f"{count:,} ({PROBLEMS[problem]})" for problem, count in encoded.dropped.items()]
    return f"{sum(encoded.dropped.values()):,} rows dropped: " + "; ".join(parts)


def collate(pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Pads a batch on the right: ``input_ids`` with ``pad_id``, ``labels`` with -100, and an
    ``attention_mask`` of 0 on the padding (masked by position, so a pad id equal to the EOS id
    does not mask the real EOS that closes a reply)."""
    torch = require_train("torch")

    def pad(features: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [pad_id] * (longest - n))
            labels.append(list(f["labels"]) + [IGNORE] * (longest - n))
            mask.append([1] * n + [0] * (longest - n))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }

    return pad
