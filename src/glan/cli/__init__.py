"""The ``glan`` command: the app, and its commands gathered from one module per group.

``generate`` (generate, estimate), ``check``, ``status``, ``curate``, ``publish`` (export, report),
``taxonomy`` (a package: build, review, edit, show) and ``prompts``; the modules mirror the
packages of ``glan`` they drive. What they share, above all the one way a
command fails, is in ``common``.
"""

from __future__ import annotations

import typer

from glan.cli import check, curate, generate, prompts, publish, status, taxonomy

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
    curate,
    publish,
    taxonomy,
    prompts,
):  # in the order --help lists them
    group.register(app)


def main() -> None:
    app()
