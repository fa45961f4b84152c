"""``glan curate``: remove duplicates, benchmark leaks and bad pairs, and record why.

Its options are ``CurateConfig``'s fields: their types and defaults are read from the model; only
the options named otherwise (``--decontaminate`` for ``benchmarks``, ``--keep-truncated`` for
``drop_truncated``, ...) are turned into their fields by ``curate_config``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from glan.cli.common import (
    RUN,
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
from glan.curation import REASONS, CurateConfig, CurationRun, curate
from glan.curation.runner import Progress as ProgressCallback
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
    "low_score": "the judge scored it below --min-score (glan judge)",
    "contradicted": "fewer samples than --min-agreement reach its final answer (glan judge --verify)",
}

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
    field_option(
        CurateConfig,
        "workers",
        help="Processes that screen pairs (filters and decontamination); with --engine ray, actors. \\[default: every core, or every CPU of the Ray cluster]",
        show_default=False,
    ),
    option(
        "engine",
        str,
        default=CURATE_DEFAULTS.engine,
        help='local: processes on this machine (--workers). ray: Ray Data over the run\'s rows on a Ray cluster, the same removals (pip install "glan\\[ray]"); for a local run, Ray on this machine or a shared filesystem. auto: ray for a run generated on a Ray cluster (on that cluster), local otherwise.',
    ),
    option(
        "ray_address",
        str | None,
        help="With --engine ray: the cluster to join ('auto' for the one this machine is in). \\[default: start Ray on this machine]",
    ),
    field_option(
        CurateConfig,
        "min_score",
        help="Remove pairs the judge scored below this overall (1-10; needs glan judge). Unjudged pairs stay.",
    ),
    field_option(
        CurateConfig,
        "min_agreement",
        help="Remove pairs whose final answer fewer than this share of the extra answers reach (0-1; needs glan judge --verify N). Questions with no single final answer stay.",
    ),
]


def register(app: typer.Typer) -> None:
    command(app, "curate")(curate_command)


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
