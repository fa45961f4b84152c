"""``glan taxonomy build``: the teacher drafts a taxonomy, level by level.

Its options that say what is asked are ``BuildConfig``'s fields, with the field's type and
default; the others (``--out``, ``--work-dir``, ``--force``, ``--verbose``) say where and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from glan.cli.common import (
    REQUIRED,
    err,
    field_option,
    no_blank_languages,
    option,
    out,
    setup_logging,
    takes,
    user_errors,
)
from glan.config import ConfigError
from glan.taxonomy.build import BuildConfig, BuildResult, build, default_work_dir
from glan.taxonomy.edit import fmt

BUILD_OPTIONS = [
    option(
        "out_file",
        Path,
        "--out",
        "-o",
        default=REQUIRED,
        help="Where to write the drafted taxonomy YAML.",
    ),
    field_option(BuildConfig, "model", help="Teacher model that drafts the tree."),
    field_option(
        BuildConfig,
        "base_url",
        help="OpenAI-compatible endpoint. \\[default: $OPENAI_BASE_URL or OpenAI]",
    ),
    field_option(BuildConfig, "api_key", help="API key. \\[default: $OPENAI_API_KEY]"),
    option(
        "structured_output",
        str | None,
        help="How to ask for JSON: auto (found by trying), json_schema, json_object+schema, json+value or prompt. \\[default: auto]",
    ),
    field_option(
        BuildConfig,
        "language",
        help="Language of the node names, e.g. Korean or ko. \\[default: English]",
    ),
    field_option(
        BuildConfig,
        "depth",
        help="Levels: 3 is field > sub-field > discipline, 2 field > discipline.",
    ),
    field_option(BuildConfig, "max_fields", help="Top-level fields to ask for, at most."),
    field_option(
        BuildConfig, "max_children", help="Children to ask for per node below the fields, at most."
    ),
    field_option(BuildConfig, "temperature", help="Sampling temperature."),
    field_option(BuildConfig, "max_tokens", help="Most tokens of one reply."),
    field_option(BuildConfig, "seed", help="Seed sent with each request."),
    field_option(BuildConfig, "concurrency", help="Requests in flight."),
    field_option(
        BuildConfig,
        "prompts_dir",
        "--prompts",
        help="Your prompt templates (taxonomy_*.j2 replace ours).",
    ),
    option(
        "work_dir",
        Path | None,
        help="Where the build keeps its calls. \\[default: OUT.glan-build next to OUT]",
    ),
    option(
        "force",
        bool,
        "--force",
        default=False,
        help="Overwrite OUT if it exists (its votes are lost).",
    ),
    option("verbose", bool, "--verbose", "-v", default=False, help="Log retries."),
]


@takes(BUILD_OPTIONS)
def build_command(
    out_file: Path, work_dir: Path | None, force: bool, verbose: bool, **settings: Any
) -> None:
    """Draft a taxonomy with the teacher, level by level.

    Breadth first, as the paper did: one call for the fields of human knowledge and capabilities
    (skills such as coding and writing included), then one call per field for its sub-fields,
    then one call per sub-field for its disciplines. Names repeated across branches
    are merged (the first stays). Every node starts unreviewed.

    Stop it at any moment and run the same command again: it resends nothing already answered
    (calls are kept in OUT.glan-build/). Next: [bold]glan taxonomy review OUT --reviewer
    NAME[/bold].
    """
    setup_logging(verbose)
    stopped = "stopped; every reply received is stored. Run the same command to continue."
    with user_errors(stopped=stopped, rerun=True):
        if out_file.exists() and not force:
            raise ConfigError(
                f"{out_file} exists (it may hold review votes); pass --force to overwrite it,"
                " or choose another --out"
            )
        no_blank_languages(language=settings["language"])
        config = BuildConfig.make(**settings)
        result = build(config, out_file, work_dir=work_dir, log=_log)
    _print_build(result, out_file, work_dir or default_work_dir(out_file))


def _log(line: str) -> None:
    err.print(f"\\[glan taxonomy] {escape(line)}")


def _print_build(result: BuildResult, out_file: Path, work_dir: Path) -> None:
    spent = f", ${result.cost:,.4f}" if result.cost else ""
    tokens_in, tokens_out = result.tokens
    tokens = f"{result.sent} requests sent ({tokens_in:,} tokens in, {tokens_out:,} out{spent})"
    reused = f", {result.reused} answers reused from {work_dir}"
    err.print(tokens + (reused if result.reused else ""))
    if result.failed or result.taxonomy is None:
        for path, problem in result.failed[:5]:
            err.print(f"failed: {fmt(path) or 'the list of fields'}: {escape(problem)}")
        err.print(
            f"[yellow]{len(result.failed)} calls failed; {out_file} was not written. Run the same"
            " command again to retry them (nothing answered is asked again)."
        )
        raise typer.Exit(3)
    levels = " > ".join(str(n) for n in result.levels)
    merged = f"; {len(result.merged)} repeated names merged" if result.merged else ""
    pruned = f"; {len(result.pruned)} emptied branches left out" if result.pruned else ""
    out.print(
        f"wrote {out_file}: {levels} nodes per level,"
        f" {len(result.taxonomy.disciplines())} disciplines{merged}{pruned}; all unreviewed."
    )
    out.print(
        f"next: glan taxonomy review {out_file} --reviewer NAME,"
        f" then glan taxonomy merge {out_file}"
    )
