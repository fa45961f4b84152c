"""``glan curate``, ``glan export`` and ``glan report``: what happens to a run's data after it is
generated.

curate's options are ``CurateConfig``'s fields: their types and defaults are read from the model;
only the options named otherwise (``--decontaminate`` for ``benchmarks``, ``--keep-truncated`` for
``drop_truncated``, ...) are turned into their fields by ``curate_config``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from glan.cli.common import (
    argument,
    comma_list,
    command,
    err,
    field_option,
    no_blank_languages,
    option,
    out,
    require_run,
    takes,
    user_errors,
)
from glan.config import ConfigError
from glan.curation import REASONS, CurateConfig, CurationRun, curate
from glan.curation.runner import Progress as ProgressCallback
from glan.publish.export import ExportResult, export
from glan.publish.report import report
from glan.run.store import DB_NAME, Store

REASON_HELP = {
    "decontaminated": "shares a long n-gram with a benchmark item",
    "too_short": "empty, or shorter than --min-question-chars / --min-answer-chars",
    "truncated": "question or answer cut off at max tokens",
    "refusal": "a refusal or an 'I don't know' answer",
    "answer_leak": "the question gives its own answer away",
    "wrong_language": "question or answer not in the expected language",
    "exact_duplicate": "same normalised question as a pair kept before it",
    "near_duplicate": "question nearly the same as one kept before it",
}

RUN = argument(
    "run", Path, help="A run directory (the --out of glan generate).", show_default=False
)
CURATE_DEFAULTS = CurateConfig()
# The CurateConfig field of each option that is named otherwise.
CURATE_NAMES = {
    "benchmarks": "decontaminate",
    "benchmark_fields": "benchmark_field",
    "drop_truncated": "keep_truncated",
    "drop_refusals": "keep_refusals",
    "refusal_patterns": "refusal_pattern",
    "drop_leaks": "keep_leaks",
}
CURATE_OPTIONS = [
    RUN,
    option(
        "decontaminate",
        str | None,
        help="Comma-separated benchmarks to remove leaks of: .jsonl, .json, .csv or .parquet files, or hf:NAME[:CONFIG] for a datasets dataset already in the local cache (or hf:DIR saved with save_to_disk). \\[default: none]",
        show_default=False,
    ),
    option(
        "benchmark_field",
        str,
        default=",".join(CURATE_DEFAULTS.benchmark_fields),
        help="The benchmark field holding the question or prompt; a comma-separated list means the first one each file has.",
    ),
    field_option(
        CurateConfig,
        "ngram",
        help="A question is a leak when it shares this many consecutive words with a benchmark item (shorter items are matched whole).",
    ),
    field_option(
        CurateConfig,
        "dedup",
        "--dedup/--no-dedup",
        help="Remove exact and near-duplicate questions (first by id stays).",
    ),
    field_option(
        CurateConfig,
        "near_dup",
        "--near-dup/--no-near-dup",
        help="With --dedup: also near duplicates (MinHash LSH), not only exact ones.",
    ),
    field_option(
        CurateConfig,
        "near_dup_threshold",
        help="Jaccard similarity of character shingles at which two questions are near duplicates (0-1].",
    ),
    field_option(CurateConfig, "shingle", help="Shingle size in characters, for near duplicates."),
    field_option(
        CurateConfig,
        "num_perm",
        help="MinHash permutations: more find near duplicates more reliably.",
    ),
    field_option(
        CurateConfig,
        "min_question_chars",
        help="Remove questions shorter than this (empty ones always go).",
    ),
    field_option(
        CurateConfig,
        "min_answer_chars",
        help="Remove answers shorter than this (empty ones always go).",
    ),
    option(
        "keep_truncated",
        bool,
        "--keep-truncated",
        default=not CURATE_DEFAULTS.drop_truncated,
        help="Keep pairs whose question or answer hit max tokens.",
    ),
    option(
        "keep_refusals",
        bool,
        "--keep-refusals",
        default=not CURATE_DEFAULTS.drop_refusals,
        help="Keep refusals and 'I don't know' answers.",
    ),
    option(
        "refusal_pattern",
        list[str] | None,
        help="Another regex (case-insensitive) that marks a refusal when found in the first 300 characters of an answer; repeat for more.",
        show_default=False,
    ),
    option(
        "keep_leaks",
        bool,
        "--keep-leaks",
        default=not CURATE_DEFAULTS.drop_leaks,
        help="Keep questions that give their own answer away.",
    ),
    field_option(
        CurateConfig,
        "leak_overlap",
        help="A question leaks its answer when it holds at least this share of the answer's 8-word runs (or carries an 'Answer:' line).",
    ),
    field_option(
        CurateConfig,
        "language",
        help="Expected language of questions and answers (ko, Korean, ...); 'any' turns the check off. \\[default: the run's --language, else English]",
        show_default=False,
    ),
    field_option(
        CurateConfig,
        "language_confidence",
        help="Remove a pair only when the language detector is at least this sure it is in another language.",
    ),
]

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
        help="Layout of each row: messages (chat messages, as TRL and OpenAI fine-tuning read), sharegpt (conversations with from/value) or alpaca (instruction/input/output). Lineage columns are kept in every layout.",
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
]


def register(app: typer.Typer) -> None:
    command(app, "curate")(curate_command)
    command(app, "export")(export_command)
    command(app, "report")(report_command)


# -- curate -------------------------------------------------------------------------------------


@takes(CURATE_OPTIONS)
def curate_command(run: Path, **options: Any) -> None:
    """Remove duplicates, benchmark leaks and bad pairs; record why each pair went.

    Each pair is removed for the first reason that applies: decontaminated, too_short, truncated,
    refusal, answer_leak, wrong_language, exact_duplicate, near_duplicate. Among duplicates, the
    pair with the smallest id stays.

    The generated data is never changed: removals (and what each matched) are stored beside it in
    RUN/glan.db, [bold]glan export[/bold] leaves them out and [bold]glan report[/bold] shows them.
    Running curate again replaces the previous curation.
    """
    stopped = "stopped; the previous curation, if any, stays in force. Run the command again."
    with user_errors(names=CURATE_NAMES, stopped=stopped):
        config = curate_config(options)
        require_run(run)
        with _progress(run) as progress:
            result = curate(run, config, progress=progress)
    _print_curation(run, result)


def curate_config(options: dict[str, Any]) -> CurateConfig:
    """The options as the config they stand for (see ``CURATE_NAMES``)."""
    no_blank_languages(language=options["language"])
    values = dict(options)
    return CurateConfig(
        benchmarks=comma_list(values.pop("decontaminate")),
        benchmark_fields=comma_list(values.pop("benchmark_field")) or ["question"],
        drop_truncated=not values.pop("keep_truncated"),
        drop_refusals=not values.pop("keep_refusals"),
        refusal_patterns=values.pop("refusal_pattern") or [],
        drop_leaks=not values.pop("keep_leaks"),
        **values,
    )


def _print_curation(run: Path, result: CurationRun) -> None:
    table = Table(title=f"glan curate {run}")
    for column in ("reason", "pairs", "what it means"):
        table.add_column(column, justify="right" if column == "pairs" else "left")
    for reason in REASONS:
        if result.counts.get(reason):
            table.add_row(reason, f"{result.counts[reason]:,}", REASON_HELP[reason])
    table.add_row("kept", f"{result.rows_kept:,}", "", style="bold")
    out.print(table)
    for benchmark in result.notes.get("benchmarks", []):
        out.print(
            f"benchmark {benchmark['name']}: {benchmark['items']:,} items from field"
            f" '{benchmark['field']}', {benchmark['indexed']:,} long enough to match"
        )
    out.print(
        f"{result.rows_in:,} pairs checked, {result.removed:,} removed, {result.rows_kept:,} kept."
        f" The record is in {run / DB_NAME}; glan export writes the kept pairs, glan report shows"
        " examples of each reason."
    )


@contextmanager
def _progress(run: Path) -> Iterator[ProgressCallback | None]:
    """A progress bar on a terminal (a million pairs take minutes); nothing in a pipe."""
    if not err.is_terminal:
        yield None
        return
    store = Store.open(run, readonly=True)
    try:
        total = sum(store.rows_by_root().values())
    finally:
        store.close()
    columns = (TextColumn("curating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("curate", total=total)

        def update(seen: int, removed: int) -> None:
            bar.update(task, completed=seen)

        yield update


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
    if result.pushed_to:
        out.print(f"  and pushed to https://huggingface.co/datasets/{result.pushed_to}")
    if result.uncurated:
        err.print(
            f"[yellow]warning:[/yellow] {result.uncurated:,} pairs generated after the last"
            " curation were left out; run glan curate again to include them"
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
