"""Decontamination: a generated question that shares a long run of words with a benchmark item.

The paper removed the questions and prompts of the benchmarks it evaluated on (test and train
splits) but did not say how. The rule here is the one GPT-3 and most papers since use: a question
is contaminated when it shares an n-gram of ``n`` normalised words (13 by default) with a
benchmark item. An item shorter than ``n`` words (many MMLU questions are) is matched whole, when
it has at least ``min_words`` words: shorter ones ("What is 2+2?") are too common to mean a leak.

Benchmarks are local JSONL, JSON, CSV or Parquet files, or a ``datasets`` dataset: ``hf:NAME`` or
``hf:NAME:CONFIG`` from the local Hugging Face cache (never downloaded here), or ``hf:DIR`` saved
with ``save_to_disk``. Each item is remembered by its n-grams' 64-bit hashes (only for this
process, so Python's own hash is fine) and its position, never its text.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glan.curation.errors import CurationError, require
from glan.curation.text import words

DEFAULT_FIELDS = ("question", "prompt", "problem")
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Contamination:
    benchmark: str
    item: int  # the item's position in its source (0-based data row; for hf:, within its split)
    split: str | None
    ngram: str  # the words the question shares with the item

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"benchmark": self.benchmark, "item": self.item}
        if self.split is not None:
            found["split"] = self.split
        found["ngram"] = self.ngram
        return found


@dataclass
class Benchmark:
    """One source as loaded: what it is called, the field read, and how many items it gave."""

    name: str
    field: str
    items: int = 0
    indexed: int = 0  # items long enough to match (>= min_words words)
    splits: list[str] = field(default_factory=list)


class BenchmarkIndex:
    """The n-grams of every benchmark item, to look a generated question up against."""

    def __init__(self, n: int = 13, min_words: int = 8) -> None:
        if n < 1:
            raise CurationError(f"--ngram must be at least 1, not {n}")
        self.n = n
        self.min_words = min(min_words, n)
        self.benchmarks: list[Benchmark] = []
        self._splits: list[str | None] = []
        self._grams: dict[int, tuple[int, int, int]] = {}  # hash -> (benchmark, split, item)
        self._lengths: set[int] = set()
        # what was indexed, for another process: Python's hash of a string differs between
        # processes, so an index sent elsewhere (to Ray actors) is built again there
        self._added: list[tuple[int, str | None, int, str]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "min_words": self.min_words,
            "benchmarks": self.benchmarks,
            "added": self._added,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["n"], state["min_words"])  # type: ignore[misc]
        self.benchmarks = state["benchmarks"]
        for benchmark, split, item, text in state["added"]:
            self.add(benchmark, split, item, text)

    def __len__(self) -> int:
        return len(self._grams)

    def add(self, benchmark: int, split: str | None, item: int, text: str) -> bool:
        """Index one item; False when it is too short to match anything."""
        tokens = words(text)
        if len(tokens) < self.min_words:
            return False
        self._added.append((benchmark, split, item, text))
        length = min(self.n, len(tokens))
        self._lengths.add(length)
        if split not in self._splits:
            self._splits.append(split)
        where = (benchmark, self._splits.index(split), item)
        for start in range(len(tokens) - length + 1):
            # the first item to hold an n-gram is the one a match reports
            self._grams.setdefault(hash(tuple(tokens[start : start + length])), where)
        return True

    def match(self, text: str) -> Contamination | None:
        """The first benchmark item the text shares an n-gram with, if any."""
        return self.match_words(words(text)) if self._grams else None

    def match_words(self, tokens: list[str]) -> Contamination | None:
        """``match`` of a text's normalised words (``words(text)``)."""
        if not self._grams:
            return None
        for length in sorted(self._lengths, reverse=True):
            for start in range(len(tokens) - length + 1):
                gram = tuple(tokens[start : start + length])
                where = self._grams.get(hash(gram))
                if where is not None:
                    benchmark, split, item = where
                    return Contamination(
                        self.benchmarks[benchmark].name, item, self._splits[split], " ".join(gram)
                    )
        return None


def parse_sources(value: str | Sequence[str] | None) -> list[str]:
    """``a.jsonl,b.parquet`` (or a list of such strings) as a list of sources."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    return [s.strip() for part in parts for s in part.split(",") if s.strip()]


def load_benchmarks(
    sources: Sequence[str], fields: Sequence[str] = DEFAULT_FIELDS, n: int = 13, min_words: int = 8
) -> BenchmarkIndex:
    """Read every source into one index; a source that cannot be read is an error, not a skip
    (a benchmark silently left out would be a leak nobody sees)."""
    index = BenchmarkIndex(n, min_words)
    for source in sources:
        benchmark = Benchmark(name=_display_name(source), field="")
        number = len(index.benchmarks)
        index.benchmarks.append(benchmark)
        for split, position, text in _items(source, list(fields), benchmark):
            benchmark.items += 1
            benchmark.indexed += index.add(number, split, position, text)
    return index


def _display_name(source: str) -> str:
    return source if source.startswith("hf:") else Path(source).name


def _items(
    source: str, fields: list[str], benchmark: Benchmark
) -> Iterator[tuple[str | None, int, str]]:
    if source.startswith("hf:"):
        yield from _dataset_items(source[3:], fields, benchmark)
        return
    path = Path(source)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CurationError(f"benchmark file {source} does not exist")
    if suffix not in FILE_SUFFIXES:
        raise CurationError(
            f"benchmark file {source}: unknown type {suffix or '(none)'}; use .jsonl, .json,"
            " .csv or .parquet, or hf:NAME for a datasets dataset"
        )
    try:
        if suffix == ".parquet":
            rows = _parquet_items(path, fields, benchmark)
        elif suffix == ".csv":
            rows = _csv_items(path, fields, benchmark)
        else:
            rows = _json_items(path, fields, benchmark)
        for position, text in rows:
            yield None, position, text
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CurationError(f"cannot read benchmark file {source}: {error}") from None


def _pick_field(columns: Sequence[str], fields: list[str], source: str) -> str:
    for name in fields:
        if name in columns:
            return name
    raise CurationError(
        f"benchmark {source} has no field {_either(fields)}"
        f" (it has: {', '.join(columns) or 'none'}); name the field with --benchmark-field"
    )


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _json_items(path: Path, fields: list[str], benchmark: Benchmark) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8-sig") as file:
        if path.suffix.lower() == ".json" and file.read(1) == "[":
            file.seek(0)
            try:
                records = json.load(file)
            except ValueError as error:
                raise CurationError(f"benchmark file {path} is not valid JSON: {error}") from None
            yield from _records(enumerate(records), path, fields, benchmark)
        else:
            file.seek(0)
            yield from _records(_json_lines(file, path), path, fields, benchmark)


def _json_lines(file: Any, path: Path) -> Iterator[tuple[int, Any]]:
    position = 0
    for number, line in enumerate(file, 1):
        if not line.strip():
            continue
        try:
            yield position, json.loads(line)
        except ValueError:
            raise CurationError(f"benchmark file {path}: line {number} is not JSON") from None
        position += 1


def _records(
    records: Any, path: Path, fields: list[str], benchmark: Benchmark
) -> Iterator[tuple[int, str]]:
    for position, record in records:
        if not isinstance(record, dict):
            raise CurationError(f"benchmark file {path}: item {position} is not a JSON object")
        if not benchmark.field:
            benchmark.field = _pick_field(list(record), fields, str(path))
        text = _text(record.get(benchmark.field))
        if text is not None:
            yield position, text


def _csv_items(path: Path, fields: list[str], benchmark: Benchmark) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        benchmark.field = _pick_field(reader.fieldnames or [], fields, str(path))
        for position, record in enumerate(reader):
            text = _text(record.get(benchmark.field))
            if text is not None:
                yield position, text


def _parquet_items(
    path: Path, fields: list[str], benchmark: Benchmark
) -> Iterator[tuple[int, str]]:
    parquet = require("pyarrow.parquet", "curate")
    try:
        source = parquet.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own error types for a bad file
        raise CurationError(f"cannot read benchmark file {path}: {error}") from None
    benchmark.field = _pick_field(source.schema_arrow.names, fields, str(path))
    position = 0
    for batch in source.iter_batches(columns=[benchmark.field], batch_size=8192):
        for value in batch.column(0).to_pylist():
            text = _text(value)
            if text is not None:
                yield position, text
            position += 1


def _dataset_items(
    name: str, fields: list[str], benchmark: Benchmark
) -> Iterator[tuple[str | None, int, str]]:
    dataset = _load_dataset(name)
    splits = dataset.items() if hasattr(dataset, "items") else [(None, dataset)]
    for split, part in splits:
        benchmark.field = _pick_field(part.column_names, fields, f"hf:{name}")
        if split is not None:
            benchmark.splits.append(split)
        for position, value in enumerate(part[benchmark.field]):
            text = _text(value)
            if text is not None:
                yield split, position, text


def _load_dataset(name: str) -> Any:
    """A dataset saved with ``save_to_disk``, or one in the local Hugging Face cache.

    Offline on purpose: decontamination must not depend on the network, and a name that is not
    cached fails at once instead of hanging on a download.
    """
    if not name:
        raise CurationError("hf: needs a dataset name, e.g. hf:openai/gsm8k:main")
    # imported first, with the user's settings, so that only this load is switched offline
    datasets = require("datasets", "hf")
    with _offline():
        return _load_offline(datasets, name)


def _load_offline(datasets: Any, name: str) -> Any:
    if Path(name).is_dir():
        try:
            return datasets.load_from_disk(name)
        except Exception as error:  # datasets raises several types for a bad directory
            raise CurationError(f"cannot load dataset directory {name}: {error}") from None
    repo, _, config = name.partition(":")
    try:
        return datasets.load_dataset(repo, config or None)
    except Exception as error:  # offline misses raise ConnectionError, ValueError, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CurationError(
            f"dataset {name} is not available offline ({first}); download it once with"
            " datasets.load_dataset, or pass the benchmark as a local file"
        ) from None


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries in offline mode for the duration. They read the environment when
    imported, so the flags of the modules already imported are switched too, and put back."""
    saved_env = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    flags = [
        (module, attribute, getattr(module, attribute))
        for module_name, attribute in (
            ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
            ("datasets.config", "HF_HUB_OFFLINE"),
            ("datasets.config", "HF_DATASETS_OFFLINE"),
        )
        if (module := sys.modules.get(module_name)) is not None and hasattr(module, attribute)
    ]
    for module, attribute, _ in flags:
        setattr(module, attribute, True)
    try:
        yield
    finally:
        for module, attribute, value in flags:
            setattr(module, attribute, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
