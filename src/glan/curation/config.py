"""What ``glan curate`` checks, and where it runs: every filter can be turned off or tuned."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from glan.curation.decontaminate import DEFAULT_FIELDS


class CurateConfig(BaseModel):
    """What ``glan curate`` checks; every filter can be turned off or tuned."""

    model_config = ConfigDict(extra="forbid")

    # decontamination
    benchmarks: list[str] = []
    benchmark_fields: list[str] = list(DEFAULT_FIELDS)
    ngram: int = Field(default=13, ge=1)
    min_benchmark_words: int = Field(default=8, ge=1)
    # dedup
    dedup: bool = True
    near_dup: bool = True
    near_dup_threshold: float = Field(default=0.8, gt=0, le=1)
    shingle: int = Field(default=5, ge=1)
    num_perm: int = Field(default=128, ge=16, le=1024)
    # filters
    min_question_chars: int = Field(default=10, ge=0)
    min_answer_chars: int = Field(default=20, ge=0)
    drop_truncated: bool = True
    drop_refusals: bool = True
    refusal_patterns: list[str] = []
    drop_leaks: bool = True
    leak_overlap: float = Field(default=0.5, gt=0, le=1)
    language: str | None = None  # None: each row's meta.language (else English); "any": no check
    language_confidence: float = Field(default=0.9, ge=0, le=1)
    # the review (glan judge): pairs not judged or not verified are kept
    min_score: float | None = Field(default=None, ge=1, le=10)  # the judge's overall score
    min_agreement: float | None = Field(default=None, ge=0, le=1)  # share of samples agreeing
    # speed
    workers: int | None = Field(default=None, ge=1)  # screening processes; None: every core
    # where: this machine's processes, or Ray Data on a Ray cluster (workers: its actors);
    # auto: Ray for a run generated on a Ray cluster, this machine otherwise (see ``where``)
    engine: Literal["auto", "local", "ray"] = "auto"
    ray_address: str | None = None  # with engine ray: the cluster to join; None: start Ray here
