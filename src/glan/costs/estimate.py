"""A dry run: how many calls and tokens each stage will take for a config, and what that costs.

Call counts follow from the config (and are exact when ``max_subjects_per_discipline`` caps the
subjects); prompt sizes come from rendering the real templates; reply sizes are assumptions,
listed in ``Assumptions`` so they can be argued with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from glan.config import GenerateConfig
from glan.costs.prices import PriceTable
from glan.llm.structured import json_schema_of
from glan.prompts import Prompts, prompts_for
from glan.stages.subjects import SubjectList
from glan.stages.syllabus import Syllabus
from glan.taxonomy import Discipline

WIDE_STAGES = ("question", "answer")  # the stages a batch API takes


@dataclass(frozen=True)
class Assumptions:
    """Typical replies. Paper: 10 queries give 100-200 subjects; syllabi have 10-30 sessions of
    about 5 key concepts."""

    subjects_per_query: int = 15
    sessions_per_syllabus: int = 20
    concepts_per_session: int = 5
    tokens_out: dict[str, int] = field(
        default_factory=lambda: {
            "subjects_draft": 1500,
            "subjects_json": 1200,
            "syllabus_draft": 2500,
            "syllabus_json": 2200,
            "question": 150,
            "answer": 600,
        }
    )


@dataclass
class StageEstimate:
    stage: str
    model: str
    calls: int
    tokens_in: int
    tokens_out: int
    cost: float | None  # online, USD; None: the model is not in the price table
    batch_cost: float | None  # through a batch API (wide stages only)


def estimate(
    config: GenerateConfig,
    disciplines: list[Discipline],
    prices: PriceTable,
    assumptions: Assumptions | None = None,
) -> list[StageEstimate]:
    a = assumptions or Assumptions()
    out = a.tokens_out
    prompts = prompts_for(config.prompts_dir)  # the templates the run will really use
    turns = 1 if config.single_turn else 2
    queries = len(disciplines) * config.subject_queries
    per_discipline = config.subject_queries * a.subjects_per_query
    if config.max_subjects_per_discipline is not None:
        per_discipline = min(per_discipline, config.max_subjects_per_discipline)
    subjects = len(disciplines) * per_discipline
    questions = subjects * config.questions_per_syllabus

    subjects_prompt = sum(
        _tokens(_subjects_prompt(prompts, config, d)) for d in disciplines
    ) // max(1, len(disciplines))
    syllabus_prompt = _tokens(_syllabus_prompt(prompts, config))
    question_prompt = _tokens(_question_prompt(prompts, config, a))
    answer_prompt = (
        _tokens(prompts.render("answer_system", language=config.language)) + out["question"]
    )

    rows = [
        (
            "subjects",
            queries,
            _two_turns(prompts, subjects_prompt, out, "subjects", SubjectList, config.single_turn),
        ),
        (
            "syllabus",
            subjects,
            _two_turns(prompts, syllabus_prompt, out, "syllabus", Syllabus, config.single_turn),
        ),
        ("question", questions, (question_prompt, out["question"])),
        ("answer", questions, (answer_prompt, out["answer"])),
    ]
    estimates = []
    for stage, items, (tokens_in, tokens_out) in rows:
        model = config.stage(stage).model or config.model
        calls = items * (turns if stage in ("subjects", "syllabus") else 1)
        total_in, total_out = items * tokens_in, items * tokens_out
        cost = prices.cost(model, total_in, total_out)
        batch = (
            prices.cost(model, total_in, total_out, batch=True) if stage in WIDE_STAGES else cost
        )
        estimates.append(StageEstimate(stage, model, calls, total_in, total_out, cost, batch))
    return estimates


def _two_turns(
    prompts: Prompts, prompt: int, out: dict[str, int], stage: str, schema: Any, single_turn: bool
) -> tuple[int, int]:
    """Tokens in and out for one item: a draft then a JSON turn, or JSON at once."""
    schema_tokens = _tokens(json.dumps(json_schema_of(schema)))
    if single_turn:
        return prompt + schema_tokens, out[f"{stage}_json"]
    draft = out[f"{stage}_draft"]
    convert = _tokens(prompts.render(f"{stage}_json"))
    return prompt + (prompt + draft + convert + schema_tokens), draft + out[f"{stage}_json"]


def _subjects_prompt(prompts: Prompts, config: GenerateConfig, discipline: Discipline) -> str:
    return prompts.render(
        "subjects",
        discipline=discipline.name,
        path=" > ".join(discipline.path[:-1]),
        description=discipline.description,
        language=config.syllabus_language,
    )


def _syllabus_prompt(prompts: Prompts, config: GenerateConfig) -> str:
    return prompts.render(
        "syllabus",
        discipline="Example discipline",
        subject="An example subject of a typical length",
        level="undergraduate",
        subtopics=["A typical subtopic name"] * 6,
        language=config.syllabus_language,
    )


def _question_prompt(prompts: Prompts, config: GenerateConfig, a: Assumptions) -> str:
    concept = "a typical key concept"
    session = {
        "title": "A typical class session title",
        "key_concepts": [concept] * a.concepts_per_session,
    }
    return prompts.render(
        "question",
        discipline="Example discipline",
        subject="An example subject of a typical length",
        level="undergraduate",
        outline=prompts.render("syllabus_outline", sessions=[session] * a.sessions_per_syllabus),
        learned_up_to=a.sessions_per_syllabus // 2,
        question_type="challenging",
        sessions=[
            {"number": 1, "title": session["title"]},
            {"number": 2, "title": session["title"]},
        ],
        key_concepts=[concept] * 3,
        language=config.language,
    )


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)
