"""Run configuration: defaults from the paper, a YAML file (``--config``), then CLI flags on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from glan.languages import language_name
from glan.llm.negotiation import StructuredOutput

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ConfigError(ValueError):
    """A config file or option that cannot be used; the message says which and why."""


def resolve_endpoint(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The teacher's URL and key: the options, else ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f"http://{base_url}" if "://" not in base_url else "http://localhost:8000/v1"
        raise ConfigError(
            f"--base-url {base_url!r} is not an http:// or https:// URL (an OpenAI-compatible"
            f" server's looks like {hint})"
        )
    if not api_key and base_url.rstrip("/") == DEFAULT_BASE_URL:
        raise ConfigError(
            "no API key: set OPENAI_API_KEY or pass --api-key (for a local server such as vLLM or"
            " Ollama, pass --base-url http://HOST:PORT/v1)"
        )
    return base_url, api_key


# Config values are taken as written, not coerced: `concurrency: true` or `seed: "7"` in a file
# is an error naming the key, not 1 or 7. An int is still a float; paths may be strings.
STRICT = ConfigDict(extra="forbid", strict=True)
AnyPath = Annotated[Path, Strict(False)]  # a Path, or a string naming one


class StageSettings(BaseModel):
    """Model and sampling of one stage; no ``model`` means the run's (answers: ``answer_model``)."""

    model_config = STRICT

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)


class Stages(BaseModel):
    model_config = STRICT

    # Paper: subjects and syllabi at T=1.0, top-p 0.95; answers at T=0.7, top-p 0.95.
    subjects: StageSettings = StageSettings(temperature=1.0, top_p=0.95, max_tokens=4096)
    syllabus: StageSettings = StageSettings(temperature=1.0, top_p=0.95, max_tokens=4096)
    question: StageSettings = StageSettings(temperature=1.0, top_p=0.95, max_tokens=1024)
    answer: StageSettings = StageSettings(temperature=0.7, top_p=0.95, max_tokens=2048)
    # Quality (glan judge): the judge scores at T=0; more answers are sampled as answers are.
    judge: StageSettings = StageSettings(temperature=0.0, max_tokens=1024)
    verify: StageSettings = StageSettings(temperature=0.7, top_p=0.95, max_tokens=2048)
    # Conversations (--turns > 1): the student's follow-up is sampled like a question, the
    # teacher's reply like an answer (and, unless set here, by the answer model).
    followup: StageSettings = StageSettings(temperature=1.0, top_p=0.95, max_tokens=1024)
    reply: StageSettings = StageSettings(temperature=0.7, top_p=0.95, max_tokens=2048)


# What a student asks after an answer (--turns > 1), each with its default weight.
FOLLOWUP_KINDS = ("clarify", "variant", "next_step", "later_session", "check_attempt")


class RateLimit(BaseModel):
    model_config = STRICT

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)


class RayOptions(BaseModel):
    """How ``--engine ray`` spreads the wide stages (questions, answers) over a Ray cluster."""

    model_config = STRICT

    address: str | None = None  # None: start Ray on this machine; "auto": join the cluster
    workers: int = Field(default=2, ge=1)  # actors per wide stage; --concurrency is split on them
    worker_cpus: float = Field(default=0.25, gt=0)  # each actor waits on HTTP: a share will do
    journal_seconds: float = Field(default=5.0, gt=0)  # replies are written out this often


class GenerateConfig(BaseModel):
    """Everything that decides what a run asks for. Same config and seed, same ids and prompts."""

    model_config = STRICT

    # teacher
    model: str = "gpt-4o-mini"
    answer_model: str | None = None
    base_url: str | None = None
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    # auto: found by trying (glan.llm.negotiation); or one of structured.MODES, forced
    structured_output: StructuredOutput = "auto"
    send_seed: bool = True
    # what to generate
    taxonomy: AnyPath | None = None
    disciplines: list[str] | None = None
    language: str | None = None  # of questions and answers; None: the teacher's default
    syllabus_language: str | None = None  # of subjects and syllabi; None: English
    allow_unreviewed: bool = False  # generate from a taxonomy with nodes nobody has reviewed
    prompts_dir: AnyPath | None = None  # NAME.j2 files here replace the bundled templates
    subject_queries: int = Field(default=10, ge=1)
    max_subjects_per_discipline: int | None = Field(default=None, ge=1)
    questions_per_syllabus: int = Field(default=10, ge=0)
    challenging_ratio: float = Field(default=0.5, ge=0, le=1)
    # uniform: the paper's sampling; cover: every session and key concept before any repeats
    question_sampling: Literal["uniform", "cover"] = "uniform"
    single_turn: bool = False
    # user turns per conversation: 1 is the paper's question and answer; each more turn is a
    # student's follow-up and the teacher's reply
    turns: int = Field(default=1, ge=1, le=50)
    followup_mix: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(FOLLOWUP_KINDS, 1.0)
    )
    seed: int = 0
    stages: Stages = Stages()
    prices: AnyPath | None = None  # price table YAML; None: the bundled one
    # USD the run directory may spend in all (every invocation's spend counts); None: no cap
    max_cost: float | None = Field(default=None, ge=0)
    # engine
    engine: Literal["local", "ray"] = "local"
    ray: RayOptions = RayOptions()
    concurrency: int = Field(default=64, ge=1)
    rpm: float | None = Field(default=None, gt=0)  # per model; None: learn from the provider
    tpm: float | None = Field(default=None, gt=0)
    rate_limits: dict[str, RateLimit] = {}  # per-model overrides of rpm/tpm
    timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    retry_backoff: float = Field(default=1.0, ge=0)  # seconds; doubles each retry, with jitter
    repair_attempts: int = Field(default=2, ge=0)
    # provider batch API (--batch): questions and answers (follow-ups and replies too) at the
    # batch price; see docs/batch.md
    batch: bool = False
    batch_max_requests: int = Field(default=50_000, ge=1)  # per batch (OpenAI's limit)
    batch_max_bytes: int = Field(default=200_000_000, ge=1024)  # per input file (OpenAI: 200 MB)
    batch_poll_interval: float = Field(default=30.0, gt=0)  # seconds between status checks
    batch_flush_after: float = Field(default=10.0, ge=0)  # send a partial batch after this idle
    # quality (glan judge RUN, or glan generate --judge --verify N): see stages/judge.py, verify.py
    judge: bool = False  # score every pair on GLAN's rubric
    verify: int = Field(default=0, ge=0, le=32)  # more answers per question, to check agreement
    judge_model: str | None = None  # None: the run's model
    judge_base_url: str | None = None  # None: the teacher's endpoint
    judge_api_key: str | None = Field(default=None, exclude=True, repr=False)

    @field_validator("language", "syllabus_language")
    @classmethod
    def _language_name(cls, value: str | None) -> str | None:
        """A language as its English name: ko, kor and korean all give Korean."""
        return language_name(value) if value and value.strip() else None

    @field_validator("followup_mix")
    @classmethod
    def _followup_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(FOLLOWUP_KINDS))
        if unknown:
            raise ValueError(
                f"unknown follow-up kind {', '.join(unknown)}; the kinds are"
                f" {', '.join(FOLLOWUP_KINDS)}"
            )
        if any(weight < 0 for weight in mix.values()) or not any(mix.values()):
            raise ValueError("weights must be >= 0, and at least one above 0")
        return {kind: float(mix[kind]) for kind in FOLLOWUP_KINDS if kind in mix}

    def stage(self, name: str) -> StageSettings:
        """The settings of stage ``name`` with its model filled in."""
        settings: StageSettings = getattr(self.stages, name)
        teacher = name in ("answer", "reply", "verify")  # the teacher's side
        default = (self.answer_model or self.model) if teacher else self.model
        if name == "judge":
            default = self.judge_model or self.model
        return settings.model_copy(update={"model": settings.model or default})

    def limits(self) -> dict[str, tuple[float | None, float | None]]:
        """(RPM, TPM) per model, ``"*"`` for the rest, as the client takes them."""
        limits = {model: (limit.rpm, limit.tpm) for model, limit in self.rate_limits.items()}
        if self.rpm or self.tpm:
            limits["*"] = (self.rpm, self.tpm)
        return limits

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> GenerateConfig:
        """Defaults, then the YAML file, then ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        if path is not None:
            values = _read_yaml(Path(path))
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            where = f" in {path}" if path else ""
            raise ConfigError(f"invalid configuration{where}: {problems(error)}") from None


def problems(error: ValidationError) -> str:
    """A pydantic error in one line, each problem after the key it is about:
    ``concurrency: Input should be a valid integer; stages.answer.temprature: ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}" for e in error.errors()
    )


def yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong with a YAML text and where, in one line: ``line 2: expected ...``."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else str(problem)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of option: value")
    return data
