"""Export: every layout and target read back with the library that consumes it, shards, the
seeded test split, what curation leaves out, replacing an earlier export, the Hub push up to the
network."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
import pyarrow.parquet as pq
import pytest

from glan.curation import CurateConfig, curate
from glan.publish.export import MANIFEST, ExportError, export
from glan.publish.layouts import LINEAGE
from test_curation import good_pair, make_run

DISCIPLINES = [
    ("Mathematics", "Formal Science", None),
    ("Chemistry", "Natural Science", None),
    ("Dance", "Humanities", "Arts"),
]


def rows_for(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` distinct pairs per discipline, then 2 exact duplicates (for curation to remove)."""
    rng = random.Random(seed)
    rows = []
    for discipline, field, sub_field in DISCIPLINES:
        for i in range(count):
            kind = "challenging" if i % 3 == 0 else "basic"
            rows.append(
                good_pair(
                    f"{discipline[:4].lower()}-{i:03d}",
                    rng,
                    discipline=discipline,
                    field=field,
                    sub_field=sub_field,
                    question_type=kind,
                    key_concepts=[f"concept {i}", "shared concept"],
                    language="English" if i % 2 else None,
                )
            )
    for n, original in enumerate(rows[:2]):
        rows.append(dict(original, id=f"zz-dup-{n}"))
    return rows


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", rows_for(20))


def read_jsonl(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def load_back(out: Path, to: str, cache: Path) -> dict[str, list[dict[str, Any]]]:
    """The export read by what a trainer would use: datasets for all three, pyarrow for Parquet."""
    if to == "hf":
        loaded = datasets.load_from_disk(str(out))
        return {split: loaded[split].to_list() for split in loaded}
    suffix = "jsonl" if to == "jsonl" else "parquet"
    files = {
        split: sorted(str(p) for p in out.glob(f"{split}*.{suffix}")) for split in ("train", "test")
    }
    files = {split: paths for split, paths in files.items() if paths}
    builder = "json" if to == "jsonl" else "parquet"
    loaded = datasets.load_dataset(builder, data_files=files, cache_dir=str(cache))
    split_rows = {split: loaded[split].to_list() for split in loaded}
    if to == "parquet":  # and pyarrow agrees, file by file
        for split, paths in files.items():
            tables = [pq.read_table(path) for path in paths]
            assert sum(t.num_rows for t in tables) == len(split_rows[split])
            assert [r["id"] for t in tables for r in t.to_pylist()] == [
                r["id"] for r in split_rows[split]
            ]
    return split_rows


@pytest.mark.parametrize("to", ["jsonl", "parquet", "hf"])
@pytest.mark.parametrize("layout", ["messages", "sharegpt", "alpaca"])
def test_every_layout_and_target_reads_back(tmp_path, run, layout, to):
    curate(run, CurateConfig())
    result = export(run, format=layout, to=to, test_per_discipline=4, seed=3, shard_size=25)
    assert result.out == run / "export" / f"{layout}-{to}"
    assert result.splits == {"train": 48, "test": 12}

    loaded = load_back(result.out, to, tmp_path / "cache")
    assert {split: len(rows) for split, rows in loaded.items()} == result.splits
    originals = {row["id"]: row for row in rows_for(20)}
    exported = [row for rows in loaded.values() for row in rows]
    assert len({row["id"] for row in exported}) == 60
    assert not any(row["id"].startswith("zz-dup") for row in exported)  # curated out
    for row in exported:
        original = originals[row["id"]]
        question, answer = (m["content"] for m in original["messages"])
        if layout == "messages":
            assert row["messages"] == original["messages"]
        elif layout == "sharegpt":
            assert row["conversations"] == [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer},
            ]
        else:
            assert (row["instruction"], row["input"], row["output"]) == (question, "", answer)
        meta = {k: "" if v is None else v for k, v in original["meta"].items()}
        meta.update(turns=1, followup_kinds=[])  # a single-turn row, as a conversation reads it
        assert {key: row[key] for key in LINEAGE} == meta


def test_big_splits_are_sharded_with_hub_names(run):
    result = export(run, to="parquet", shard_size=7)
    assert result.splits == {"train": 62}
    names = sorted(Path(name).name for name in result.files)
    assert names == [f"train-{i:05d}-of-00009.parquet" for i in range(9)]
    sizes = [pq.read_metadata(result.out / name).num_rows for name in names]
    assert sizes == [7] * 8 + [6]
    manifest = json.loads((result.out / MANIFEST).read_text())
    assert manifest["rows"] == 62 and manifest["curation"] is None


def test_the_test_split_is_seeded_per_discipline_and_ignores_row_order(tmp_path):
    rows = rows_for(20)
    forward = make_run(tmp_path / "forward", rows)
    backward = make_run(tmp_path / "backward", rows[::-1])

    def test_rows(run: Path, seed: int, per: int = 5) -> list[dict[str, Any]]:
        result = export(run, to="jsonl", test_per_discipline=per, seed=seed, out=tmp_path / "x")
        return read_jsonl([result.out / "test.jsonl"])

    def test_ids(run: Path, seed: int) -> list[str]:
        return sorted(row["id"] for row in test_rows(run, seed))

    chosen = test_rows(forward, seed=1)
    assert len(chosen) == 15
    assert Counter(row["discipline"] for row in chosen) == {d: 5 for d, _, _ in DISCIPLINES}
    chosen = sorted(row["id"] for row in chosen)
    assert test_ids(backward, seed=1) == chosen
    assert test_ids(forward, seed=2) != chosen

    # a discipline with no more pairs than asked for goes to test entirely, and is named
    result = export(forward, test_per_discipline=21, out=tmp_path / "all")
    assert result.splits == {"train": 1, "test": 21 + 20 + 20}  # Mathematics has 22 pairs
    assert result.test_only == ["Chemistry", "Dance"]


def test_export_takes_the_curated_set_and_says_so(run):
    everything = export(run)
    assert everything.curation is None and everything.rows == 62

    curated = curate(run, CurateConfig())
    result = export(run)
    assert result.curation == curated.id and result.removed == 2 and result.rows == 60

    # pairs that arrive after curation are left out until the next curate, and counted
    make_run(run, [good_pair("late-1", random.Random(99))])
    result = export(run)
    assert result.rows == 60 and result.uncurated == 1
    assert export(run, use_curation=False).rows == 63


def test_an_earlier_export_is_replaced_but_nothing_else(tmp_path, run):
    first = export(run, to="jsonl", shard_size=10)
    assert len(first.files) == 7
    second = export(run, to="jsonl")
    assert sorted(p.name for p in second.out.iterdir()) == [MANIFEST, "train.jsonl"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not a glan export"):
        export(run, out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".mine.partial*"))


def test_unknown_options_are_clear_errors(tmp_path, run):
    with pytest.raises(ExportError, match="unknown format 'csv'"):
        export(run, format="csv")
    with pytest.raises(ExportError, match="unknown target 'xlsx'"):
        export(run, to="xlsx")
    with pytest.raises(ExportError, match="--push-to-hub needs --to hf"):
        export(run, to="parquet", push_to_hub="me/data")
    with pytest.raises(ExportError, match="not a glan run directory"):
        export(tmp_path / "nowhere")


def test_push_without_a_token_fails_before_any_work(run, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="needs a token: set HF_TOKEN"):
        export(run, to="hf", push_to_hub="me/glan-data")
    assert not (run / "export").exists()


def test_push_sends_the_saved_dataset_with_the_token(run, monkeypatch):
    pushed: list[dict[str, Any]] = []

    def fake_push(self: datasets.DatasetDict, repo_id: str, **options: Any) -> None:
        pushed.append({"repo": repo_id, "splits": {k: v.num_rows for k, v in self.items()}})
        pushed[-1].update(options)

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    result = export(run, to="hf", push_to_hub="me/glan-data", private=True, test_per_discipline=2)
    assert pushed == [
        {
            "repo": "me/glan-data",
            "splits": {"train": 56, "test": 6},
            "private": True,
            "token": "hf_test_token",
        }
    ]
    assert result.pushed_to == "me/glan-data"
    assert datasets.load_from_disk(str(result.out))["test"].num_rows == 6


def test_cli_export_says_what_it_exported(run, cli):
    result = cli("export", str(run), "--format", "alpaca", "--to", "parquet")
    assert result.returncode == 0, result.stderr
    assert "exported every generated pair (not curated" in result.stdout
    assert "62 pairs (train 62) as alpaca parquet" in result.stdout
    curate(run, CurateConfig())
    result = cli("export", str(run), "--test-per-discipline", "3")
    assert "exported the curated set (2 pairs removed" in result.stdout
    assert "60 pairs (train 51, test 9)" in result.stdout
    result = cli("export", str(run), "--format", "chatml")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: unknown format 'chatml'; choose messages, sharegpt, alpaca"
    )


def test_cli_push_without_a_token_is_one_line(run, cli, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    result = cli("export", str(run), "--to", "hf", "--push-to-hub", "me/data")
    assert result.returncode == 1
    assert "needs a token: set HF_TOKEN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
