"""``glan export`` and ``glan report``: the dataset for training, and a page about it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from glan.cli.common import (
    RUN,
    argument,
    command,
    err,
    option,
    out,
    require_run,
    takes,
    user_errors,
)
from glan.config import ConfigError
from glan.publish.export import ExportResult, export
from glan.publish.report import report

EXPORT_OPTIONS = [
    argument(
        "run",
        str,
        help="A run directory (the --out of glan generate; a Ray run's may be a URI).",
        show_default=False,
    ),
    option(
        "format",
        str,
        "--format",
        "-f",
        default="messages",
        help="Layout of each row: messages (chat messages, as TRL and OpenAI fine-tuning read), sharegpt (conversations with from/value) or alpaca (instruction/input/output; of a multi-turn conversation, its first turn only). Lineage columns are kept in every layout.",
    ),
    option(
        "to",
        str,
        default="jsonl",
        help="jsonl, parquet (sharded) or hf (a datasets DatasetDict saved with save_to_disk).",
    ),
    option(
        "out",
        Path | None,
        "--out",
        "-o",
        help="Directory to write (replaced if it holds an earlier export). \\[default: RUN/export/FORMAT-TO]",
        show_default=False,
    ),
    option(
        "shard_size",
        int,
        default=100_000,
        help="Rows per file for jsonl and parquet; more rows, more files.",
    ),
    option(
        "test_per_discipline",
        int,
        default=0,
        help="Hold out this many pairs per discipline as a 'test' split (the paper's GLAN-Test used 50); 0 for no test split.",
    ),
    option("seed", int, default=0, help="Seed of the test split's choice: same seed, same split."),
    option(
        "push_to_hub",
        str | None,
        help="With --to hf: also push to this Hugging Face Hub dataset repo (user/name); needs HF_TOKEN or `hf auth login`.",
        show_default=False,
    ),
    option(
        "private",
        bool,
        "--private",
        default=False,
        help="With --push-to-hub: make the repo private.",
    ),
    option(
        "ignore_curation",
        bool,
        "--ignore-curation",
        default=False,
        help="Export every generated pair, even if glan curate has run.",
    ),
    option(
        "majority_answers",
        bool,
        "--majority-answers",
        default=False,
        help="Where most extra answers of glan judge --verify N reach another final answer, export the majority's answer instead (the row's majority_answer column says so).",
    ),
]


def register(app: typer.Typer) -> None:
    command(app, "export")(export_command)
    command(app, "report")(report_command)


# -- export -------------------------------------------------------------------------------------


@takes(EXPORT_OPTIONS)
def export_command(run: str, ignore_curation: bool, **options: Any) -> None:
    """Write the dataset for training: the curated set if glan curate has run, else every pair.

    Files are named the Hugging Face Hub's way (train-00000-of-00002.parquet, test.parquet), so
    datasets.load_dataset("parquet", data_dir=OUT) reads them as splits; --to hf writes a
    DatasetDict for datasets.load_from_disk(OUT).
    """
    with user_errors():
        require_run(run)
        if options["out"] is None:
            _require_writable(run, "the export")
        result = export(run, use_curation=not ignore_curation, **options)
    _print_export(result)


def _print_export(result: ExportResult) -> None:
    if result.curation is not None:
        what = f"the curated set ({result.removed:,} pairs removed by glan curate left out)"
    else:
        what = (
            "every generated pair (not curated: glan curate removes duplicates, leaks and bad"
            " pairs)"
        )
    splits = ", ".join(f"{name} {count:,}" for name, count in result.splits.items())
    out.print(f"exported {what}: {result.rows:,} pairs ({splits}) as {result.format} {result.to}")
    out.print(f"  to {result.out} ({len(result.files)} files)")
    if result.majority_answers:
        out.print(f"  {result.majority_answers:,} answers swapped for the majority's")
    if result.pushed_to:
        out.print(f"  and pushed to https://huggingface.co/datasets/{result.pushed_to}")
    if result.uncurated:
        err.print(
            f"[yellow]warning:[/yellow] {result.uncurated:,} pairs generated after the last"
            " curation were left out; run glan curate again to include them"
        )
    if result.first_turn_only:
        err.print(
            f"[yellow]note:[/yellow] alpaca has no turns: {result.first_turn_only:,} conversations"
            " were exported as their first question and answer only; --format messages or"
            " sharegpt keeps every turn"
        )
    if result.test_only:
        names = ", ".join(result.test_only[:5]) + (" ..." if len(result.test_only) > 5 else "")
        err.print(
            f"[yellow]warning:[/yellow] {len(result.test_only)} disciplines have no more pairs than"
            f" --test-per-discipline, so all went to test and none to train: {names}"
        )


# -- report -------------------------------------------------------------------------------------


@takes(
    [
        RUN,
        option(
            "out_file",
            Path | None,
            "--out",
            "-o",
            help="Where to write the page. \\[default: RUN/report.html]",
            show_default=False,
        ),
    ]
)
def report_command(run: Path, out_file: Path | None) -> None:
    """One self-contained HTML page about the dataset; it opens with no network.

    Pairs per field and discipline (a treemap of the taxonomy), question and answer lengths, the
    basic/challenging mix, key concepts used, curation counts by reason with examples, and tokens
    and cost per stage.
    """
    with user_errors():
        require_run(run)
        if out_file is None:
            _require_writable(run, "the page")
        path = report(run, out_file)
    out.print(f"wrote {path}")


def _require_writable(run: str | Path, what: str) -> None:
    """Reading a run works on read-only media; writing into it by default does not: say so."""
    if "://" not in str(run) and not os.access(run, os.W_OK):
        raise ConfigError(f"{run} is read-only; pass --out to write {what} elsewhere")
