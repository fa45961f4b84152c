"""The ``glan`` command: the app, and its commands gathered from one module per group.

``generate`` (generate, estimate), ``check``, ``status``, ``judge``, ``curate``, ``publish``
(export, report), ``evaluate`` (eval), ``train``, ``taxonomy`` (a package: build, review, edit,
show) and ``prompts``; the modules mirror the packages of ``glan`` they drive. What they
share, above all the one way a command fails, is in ``common``; the options of a run and the
config they make in ``run_options``, a run's plan and its confirmation in ``plan``, and
``--local-model``'s server in ``local_model``.
"""

from __future__ import annotations

import sys

import typer

from glan.cli import (
    check,
    curate,
    evaluate,
    generate,
    judge,
    prompts,
    publish,
    status,
    taxonomy,
    train,
)

app = typer.Typer(
    help=(
        "Make instruction-tuning data almost from scratch, the GLAN way: a taxonomy of human"
        " knowledge -> subjects per discipline -> a syllabus per subject -> homework questions"
        " from sampled class sessions and key concepts -> answers. Any OpenAI-compatible teacher"
        " (OpenAI, Azure OpenAI, vLLM, SGLang, Ollama, llama.cpp)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
for group in (
    generate,
    check,
    status,
    judge,
    curate,
    publish,
    evaluate,
    train,
    taxonomy,
    prompts,
):  # in the order --help lists them
    group.register(app)


# Options whose value may be left out (``--local-model`` alone: the bundled model). typer's
# parser has no optional values, so ``main`` gives such an option an empty one.
OPTIONAL_VALUES = frozenset({"--local-model"})


def with_optional_values(args: list[str]) -> list[str]:
    """``args`` with ``""`` after each option of OPTIONAL_VALUES given without a value (last, or
    followed by another option)."""
    fixed: list[str] = []
    for index, arg in enumerate(args):
        fixed.append(arg)
        if arg in OPTIONAL_VALUES:
            following = args[index + 1] if index + 1 < len(args) else None
            if following is None or (following.startswith("-") and following != "-"):
                fixed.append("")
        if arg == "--":
            fixed.extend(args[index + 1 :])
            break
    return fixed


def main() -> None:
    app(args=with_optional_values(sys.argv[1:]))
