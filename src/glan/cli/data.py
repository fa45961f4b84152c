"""``glan curate``, ``glan export`` and ``glan report``: what happens to a run's data after it is
generated."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from glan.config import ConfigError
from glan.curation import REASONS, CurateConfig, CurationError, MissingExtraError, curate
from glan.curation.runner import Progress as ProgressCallback
from glan.publish.export import ExportError, ExportResult, export
from glan.publish.report import ReportError, report
from glan.run.parts import RunFilesError, store_dir
from glan.run.store import DB_NAME, Store, StoreError

USER_ERRORS = (
    ConfigError,
    CurationError,
    ExportError,
    ReportError,
    MissingExtraError,
    RunFilesError,
    StoreError,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

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

RunArgument = Annotated[
    Path, typer.Argument(help="A run directory (the --out of glan generate).", show_default=False)
]


# Help texts as single-line paragraphs: rich keeps a docstring's line breaks, which wraps badly.
CURATE_HELP = (
    "Remove duplicates, benchmark leaks and bad pairs; record why each pair went.\n\n"
    "Each pair is removed for the first reason that applies: decontaminated, too_short,"
    " truncated, refusal, answer_leak, wrong_language, exact_duplicate, near_duplicate. Among"
    " duplicates, the pair with the smallest id stays.\n\n"
    "The generated data is never changed: removals (and what each matched) are stored beside it"
    " in RUN/glan.db, [bold]glan export[/bold] leaves them out and [bold]glan report[/bold] shows"
    " them. Running curate again replaces the previous curation."
)
EXPORT_HELP = (
    "Write the dataset for training: the curated set if glan curate has run, else every pair."
    "\n\n"
    "Files are named the Hugging Face Hub's way (train-00000-of-00002.parquet, test.parquet), so"
    ' datasets.load_dataset("parquet", data_dir=OUT) reads them as splits; --to hf writes a'
    " DatasetDict for datasets.load_from_disk(OUT)."
)
REPORT_HELP = (
    "One self-contained HTML page about the dataset; it opens with no network.\n\n"
    "Pairs per field and discipline (a treemap of the taxonomy), question and answer lengths,"
    " the basic/challenging mix, key concepts used, curation counts by reason with examples, and"
    " tokens and cost per stage."
)


def register(app: typer.Typer) -> None:
    app.command("curate", help=CURATE_HELP)(curate_command)
    app.command("export", help=EXPORT_HELP)(export_command)
    app.command("report", help=REPORT_HELP)(report_command)


# -- curate -------------------------------------------------------------------------------------


def curate_command(
    run: RunArgument,
    decontaminate: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated benchmarks to remove leaks of: .jsonl, .json, .csv or .parquet"
            " files, or hf:NAME[:CONFIG] for a datasets dataset already in the local cache (or"
            " hf:DIR saved with save_to_disk). \\[default: none]",
            show_default=False,
        ),
    ] = None,
    benchmark_field: Annotated[
        str,
        typer.Option(
            help="The benchmark field holding the question or prompt; a comma-separated list"
            " means the first one each file has."
        ),
    ] = "question,prompt,problem",
    ngram: Annotated[
        int,
        typer.Option(
            help="A question is a leak when it shares this many consecutive words with a"
            " benchmark item (shorter items are matched whole)."
        ),
    ] = 13,
    dedup: Annotated[
        bool,
        typer.Option(
            "--dedup/--no-dedup",
            help="Remove exact and near-duplicate questions (first by id stays).",
        ),
    ] = True,
    near_dup: Annotated[
        bool,
        typer.Option(
            "--near-dup/--no-near-dup",
            help="With --dedup: also near duplicates (MinHash LSH), not only exact ones.",
        ),
    ] = True,
    near_dup_threshold: Annotated[
        float,
        typer.Option(
            help="Jaccard similarity of character shingles at which two questions are near"
            " duplicates (0-1]."
        ),
    ] = 0.8,
    shingle: Annotated[
        int, typer.Option(help="Shingle size in characters, for near duplicates.")
    ] = 5,
    num_perm: Annotated[
        int, typer.Option(help="MinHash permutations: more find near duplicates more reliably.")
    ] = 128,
    min_question_chars: Annotated[
        int, typer.Option(help="Remove questions shorter than this (empty ones always go).")
    ] = 10,
    min_answer_chars: Annotated[
        int, typer.Option(help="Remove answers shorter than this (empty ones always go).")
    ] = 20,
    keep_truncated: Annotated[
        bool,
        typer.Option(
            "--keep-truncated", help="Keep pairs whose question or answer hit max tokens."
        ),
    ] = False,
    keep_refusals: Annotated[
        bool,
        typer.Option("--keep-refusals", help="Keep refusals and 'I don't know' answers."),
    ] = False,
    refusal_pattern: Annotated[
        list[str] | None,
        typer.Option(
            help="Another regex (case-insensitive) that marks a refusal when found in the first"
            " 300 characters of an answer; repeat for more.",
            show_default=False,
        ),
    ] = None,
    keep_leaks: Annotated[
        bool,
        typer.Option("--keep-leaks", help="Keep questions that give their own answer away."),
    ] = False,
    leak_overlap: Annotated[
        float,
        typer.Option(
            help="A question leaks its answer when it holds at least this share of the answer's"
            " 8-word runs (or carries an 'Answer:' line)."
        ),
    ] = 0.5,
    language: Annotated[
        str | None,
        typer.Option(
            help="Expected language of questions and answers (ko, Korean, ...); 'any' turns the"
            " check off. \\[default: the run's --language, else English]",
            show_default=False,
        ),
    ] = None,
    language_confidence: Annotated[
        float,
        typer.Option(
            help="Remove a pair only when the language detector is at least this sure it is in"
            " another language."
        ),
    ] = 0.9,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that screen pairs (filters and decontamination). \\[default: every core]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """glan curate (CURATE_HELP says what it does)."""
    with _user_errors():
        config = CurateConfig(
            benchmarks=_split(decontaminate),
            benchmark_fields=_split(benchmark_field) or ["question"],
            ngram=ngram,
            dedup=dedup,
            near_dup=near_dup,
            near_dup_threshold=near_dup_threshold,
            shingle=shingle,
            num_perm=num_perm,
            min_question_chars=min_question_chars,
            min_answer_chars=min_answer_chars,
            drop_truncated=not keep_truncated,
            drop_refusals=not keep_refusals,
            refusal_patterns=refusal_pattern or [],
            drop_leaks=not keep_leaks,
            leak_overlap=leak_overlap,
            language=language,
            language_confidence=language_confidence,
            workers=workers,
        )
        _require_run(run)
        with _progress(run) as progress:
            result = curate(run, config, progress=progress)
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


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@contextmanager
def _progress(run: Path) -> Iterator[ProgressCallback | None]:
    """A progress bar on a terminal (a million pairs take minutes); nothing in a pipe."""
    if not err.is_terminal:
        yield None
        return
    store = Store.open(run)
    try:
        count = store.db.execute("SELECT COUNT(*) FROM nodes WHERE out_seq IS NOT NULL")
        total = count.fetchone()[0]
    finally:
        store.close()
    columns = (TextColumn("curating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("curate", total=total)

        def update(seen: int, removed: int) -> None:
            bar.update(task, completed=seen)

        yield update


# -- export -------------------------------------------------------------------------------------


def export_command(
    run: Annotated[
        str,
        typer.Argument(
            help="A run directory (the --out of glan generate; a Ray run's may be a URI).",
            show_default=False,
        ),
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="Layout of each row: messages (chat messages, as TRL and OpenAI fine-tuning"
            " read), sharegpt (conversations with from/value) or alpaca"
            " (instruction/input/output). Lineage columns are kept in every layout.",
        ),
    ] = "messages",
    to: Annotated[
        str,
        typer.Option(
            help="jsonl, parquet (sharded) or hf (a datasets DatasetDict saved with save_to_disk)."
        ),
    ] = "jsonl",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Directory to write (replaced if it holds an earlier export)."
            " \\[default: RUN/export/FORMAT-TO]",
            show_default=False,
        ),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(help="Rows per file for jsonl and parquet; more rows, more files.")
    ] = 100_000,
    test_per_discipline: Annotated[
        int,
        typer.Option(
            help="Hold out this many pairs per discipline as a 'test' split (the paper's"
            " GLAN-Test used 50); 0 for no test split."
        ),
    ] = 0,
    seed: Annotated[
        int, typer.Option(help="Seed of the test split's choice: same seed, same split.")
    ] = 0,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            help="With --to hf: also push to this Hugging Face Hub dataset repo (user/name);"
            " needs HF_TOKEN or `hf auth login`.",
            show_default=False,
        ),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="With --push-to-hub: make the repo private.")
    ] = False,
    ignore_curation: Annotated[
        bool,
        typer.Option(
            "--ignore-curation", help="Export every generated pair, even if glan curate has run."
        ),
    ] = False,
) -> None:
    """glan export (EXPORT_HELP says what it does)."""
    with _user_errors():
        _require_run(run)
        result = export(
            run,
            format=format,
            to=to,
            out=out_dir,
            shard_size=shard_size,
            test_per_discipline=test_per_discipline,
            seed=seed,
            push_to_hub=push_to_hub,
            private=private,
            use_curation=not ignore_curation,
        )
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


def report_command(
    run: RunArgument,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write the page. \\[default: RUN/report.html]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """glan report (REPORT_HELP says what it does)."""
    with _user_errors():
        _require_run(run)
        path = report(run, out_file)
    out.print(f"wrote {path}")


# -- shared -------------------------------------------------------------------------------------


def _require_run(run: str | Path) -> None:
    if not (store_dir(run) / DB_NAME).is_file():
        raise ConfigError(f"{run} is not a glan run directory (no {DB_NAME} in it)")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can fix: one line, no traceback, exit status 1."""
    try:
        yield
    except USER_ERRORS as error:
        _fail(str(error))
    except ValidationError as error:
        _fail(_option_problem(error))
    except (OSError, sqlite3.Error) as error:
        _fail(str(error))


def _option_problem(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = "--" + "-".join(str(part) for part in item["loc"][:1]).replace("_", "-")
        problems.append(f"{_OPTION_NAMES.get(name, name)}: {item['msg']}")
    return "; ".join(problems)


# CurateConfig fields whose option has another name
_OPTION_NAMES = {
    "--benchmarks": "--decontaminate",
    "--benchmark-fields": "--benchmark-field",
    "--refusal-patterns": "--refusal-pattern",
}


def _fail(message: Any) -> None:
    err.print(f"[red]error:[/red] {escape(str(message))}")
    raise typer.Exit(1)
