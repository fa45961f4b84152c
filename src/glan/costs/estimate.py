"""A dry run: how many calls and tokens each stage will take for a config, and what that costs.

Call counts follow from the config (and are exact when ``max_subjects_per_discipline`` caps the
subjects); prompt sizes come from rendering the real templates; reply sizes and how much of the
prompts a provider reads from its prefix cache are assumptions, listed in ``Assumptions`` so they
can be argued with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from glan.config import GenerateConfig
from glan.costs.prices import PriceTable
from glan.items import Item
from glan.llm.structured import json_schema_of
from glan.llm.types import ChatRequest
from glan.stages.base import assistant, user
from glan.stages.pipeline import Pipeline
from glan.stages.review import ReviewWorkflow
from glan.taxonomy import Discipline

WIDE_STAGES = ("question", "answer", "followup", "reply", "judge", "verify")  # batchable


@dataclass(frozen=True)
class Assumptions:
    """Typical replies. Paper: 10 queries give 100-200 subjects; syllabi have 10-30 sessions of
    about 5 key concepts."""

    subjects_per_query: int = 15
    sessions_per_syllabus: int = 20
    concepts_per_session: int = 5
    # Prefix caching. A request that starts like an earlier one (the 2nd and later questions of a
    # subject repeat its syllabus and instructions; a JSON turn repeats its draft turn) may have
    # that prefix read from the provider's cache, billed at the model's cached_input rate. The
    # cache is best effort (a request may reach a server that has not seen the prefix, and
    # entries expire after minutes), so only this share of such prefixes is counted as cached,
    # and none shorter than ``min_cached_prefix`` tokens (OpenAI caches from 1,024 tokens on; vLLM
    # and SGLang cache any prefix, but self-hosted tokens are usually priced at 0 anyway).
    cache_hit: float = 0.5
    min_cached_prefix: int = 1024
    tokens_out: dict[str, int] = field(
        default_factory=lambda: {
            "subjects_draft": 1500,
            "subjects_json": 1200,
            "syllabus_draft": 2500,
            "syllabus_json": 2200,
            "question": 150,
            "answer": 600,
            "judge": 200,
            "final_answer": 30,
            "followup": 120,
            "reply": 500,
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
    tokens_cached: int = 0  # of tokens_in, expected from the provider's prefix cache

    @property
    def cached_share(self) -> float:
        return self.tokens_cached / self.tokens_in if self.tokens_in else 0.0


def estimate(
    config: GenerateConfig,
    disciplines: list[Discipline],
    prices: PriceTable,
    assumptions: Assumptions | None = None,
) -> list[StageEstimate]:
    a = assumptions or Assumptions()
    pipeline = Pipeline(config)  # the stages, and so the prompts, that the run will really use
    queries = len(disciplines) * config.subject_queries
    per_discipline = config.subject_queries * a.subjects_per_query
    if config.max_subjects_per_discipline is not None:
        per_discipline = min(per_discipline, config.max_subjects_per_discipline)
    subjects = len(disciplines) * per_discipline
    questions = subjects * config.questions_per_syllabus
    items = {"subjects": queries, "syllabus": subjects, "question": questions, "answer": questions}
    items.update(judge=questions, verify=questions)
    # a conversation of N turns: N - 1 follow-ups, each with its reply
    items["followup"] = items["reply"] = questions * (config.turns - 1)

    estimates = []
    per_item = _per_item(pipeline, disciplines, a) | _per_review(config, a)
    for stage, (prompt, turns, tokens_out, cached) in per_item.items():
        model = config.stage(stage).model or config.model
        total_in, total_out = items[stage] * prompt, items[stage] * tokens_out
        total_cached = round(items[stage] * cached)
        cost = prices.cost(model, total_in, total_out, cached=total_cached)
        batch = (
            prices.cost(model, total_in, total_out, batch=True, cached=total_cached)
            if stage in WIDE_STAGES
            else cost
        )
        estimates.append(
            StageEstimate(
                stage, model, items[stage] * turns, total_in, total_out, cost, batch, total_cached
            )
        )
    return estimates


def _per_item(
    pipeline: Pipeline, disciplines: list[Discipline], a: Assumptions
) -> dict[str, tuple[int, int, int, float]]:
    """(tokens in, calls, tokens out, cached tokens in) of one item of each stage, priced from
    the request the stage itself builds for a typical item (for subjects, the mean over the
    disciplines)."""
    out = a.tokens_out
    stages = pipeline.stages
    roots = [new.as_item() for new in pipeline.roots(disciplines or [_EXAMPLE])]
    roots = [root for root in roots if root.kind == "discipline"]
    queries = [(pipeline.subjects.queries(root)[0].as_item(), root) for root in roots]
    subjects_prompt = sum(_tokens(stages["subject_query"].request(*q)) for q in queries)
    subjects_prompt //= len(queries)
    discipline = roots[0]
    concept = "a typical key concept"
    session = {
        "title": "A typical class session title",
        "description": "",
        "key_concepts": [concept] * a.concepts_per_session,
    }
    subject_data = {
        **discipline.data,
        "subject": "An example subject of a typical length",
        "level": "undergraduate",
        "subtopics": ["A typical subtopic name"] * 6,
    }
    subject = Item("subject", "subject", discipline.id, discipline.root, 0, subject_data)
    subject = subject.done({"sessions": [session] * a.sessions_per_syllabus})
    spec_data = {
        **subject_data,
        "question_type": "challenging",
        "session_numbers": [1, 2],
        "sessions": [session["title"]] * 2,
        "key_concepts": [concept] * 3,
    }
    spec = Item("spec", "question", subject.id, subject.root, 0, spec_data)
    question = spec.done({"question": "", "model": "", "finish_reason": "stop"})
    answer = stages["question"].expand(question)[0].as_item()
    single = pipeline.config.single_turn
    syllabus_prompt = _tokens(stages["subject"].request(subject, discipline))
    turns = _turns(pipeline, subject, question, answer, a) if pipeline.config.turns > 1 else {}
    # The part of a question prompt every question of the subject shares: up to where two specs
    # of it differ.
    other = Item("spec", "question", subject.id, subject.root, 1, {**spec_data, **_OTHER_SPEC})
    shared = _shared_prefix(
        stages["question"].request(spec, subject), stages["question"].request(other, subject)
    )
    per_subject = pipeline.config.questions_per_syllabus
    repeats = (per_subject - 1) / per_subject if per_subject else 0.0  # all but the first
    return {
        "subjects": _two_turns(
            stages["subject_query"], subjects_prompt, out, "subjects", single, a
        ),
        "syllabus": _two_turns(stages["subject"], syllabus_prompt, out, "syllabus", single, a),
        "question": (
            _tokens(stages["question"].request(spec, subject)),
            1,
            out["question"],
            repeats * _cached(shared, a),
        ),
        "answer": (
            _tokens(stages["answer"].request(answer, question)) + out["question"],
            1,
            out["answer"],
            0.0,  # a short system prompt, then the question: nothing worth caching
        ),
        **turns,
    }


def _per_review(config: GenerateConfig, a: Assumptions) -> dict[str, tuple[int, int, int, float]]:
    """The review's calls per pair (glan judge, --judge, --verify N): the judge's one, and the
    final-answer extraction of the pair's own answer plus, per extra answer, the answer and its
    extraction."""
    out = a.tokens_out
    workflow = ReviewWorkflow(config)
    question, answer = "x" * (4 * out["question"]), "x" * (4 * out["answer"])
    row = {"id": "row", "messages": [user(question), assistant(answer)], "meta": {}}
    review: dict[str, tuple[int, int, int, float]] = {}
    if config.judge:
        item = next(workflow.plant([row])).as_item()
        review["judge"] = (_tokens(workflow.judge.request(item, item)), 1, out["judge"], 0.0)
    if config.verify:
        holder = Item("v", "verification", None, "review", 0, {"messages": row["messages"]})
        own = Item("s0", "verify_sample", "v", "review", 0, {"index": 0})
        extraction = _tokens(workflow.verify.request(own, holder))
        ask = _tokens(
            workflow.verify.request(Item("s1", "verify_sample", "v", "r", 1, {"index": 1}), holder)
        )
        n = config.verify
        tokens_in = extraction + n * (ask + extraction)
        review["verify"] = (
            tokens_in,
            1 + 2 * n,
            out["final_answer"] + n * (out["answer"] + out["final_answer"]),
            0.0,
        )
    return review


def _turns(
    pipeline: Pipeline, subject: Item, question: Item, answer: Item, a: Assumptions
) -> dict[str, tuple[int, int, int, float]]:
    """(tokens in, calls, tokens out) of a typical follow-up and reply, the mean over turns 2
    to N: each prompt carries the conversation so far, which grows by a follow-up and a reply
    each turn."""
    out = a.tokens_out
    first = answer.done(
        {
            "id": answer.id,
            "messages": [
                {"role": "user", "content": _text(out["question"])},
                {"role": "assistant", "content": _text(out["answer"])},
            ],
            "meta": dict(question.data),
        }
    )
    followups = pipeline.children(first)
    followup = replace(followups[0].as_item(), context=subject)
    asked = followup.done({"question": _text(out["followup"]), "kind": "clarify"})
    reply = replace(pipeline.children(asked)[0].as_item(), context=first)
    growth = (out["followup"] + out["reply"]) * (pipeline.config.turns - 2) // 2
    return {
        "followup": (
            _tokens(pipeline.stages["followup"].request(followup, first)) + growth,
            1,
            out["followup"],
            0.0,
        ),
        "reply": (
            _tokens(pipeline.stages["reply"].request(reply, asked)) + growth,
            1,
            out["reply"],
            0.0,
        ),
    }


def _text(tokens: int) -> str:
    """A text of about ``tokens`` tokens (four characters each), to size prompts with."""
    return ("lorem " * tokens)[: 4 * tokens]


_OTHER_SPEC = {"question_type": "basic", "session_numbers": [3], "sessions": ["Another session"]}


def _two_turns(
    stage: Any, prompt: int, out: dict[str, int], name: str, single_turn: bool, a: Assumptions
) -> tuple[int, int, int, float]:
    """Tokens in, calls, tokens out and cached tokens in for one item: a draft then a JSON turn
    (the paper's way; the JSON turn repeats the draft turn, which may be cached), or JSON at
    once."""
    schema_tokens = _tokens(json.dumps(json_schema_of(stage.schema)))
    if single_turn:
        return prompt + schema_tokens, 1, out[f"{name}_json"], 0.0
    draft = out[f"{name}_draft"]
    convert = max(1, len(stage.convert) // 4)
    tokens_in = prompt + (prompt + draft + convert + schema_tokens)
    return tokens_in, 2, draft + out[f"{name}_json"], _cached(prompt + draft, a)


def _cached(prefix: int, a: Assumptions) -> float:
    """Expected cached tokens of a request that repeats a prefix of ``prefix`` tokens."""
    return a.cache_hit * prefix if prefix >= a.min_cached_prefix else 0.0


def _shared_prefix(first: ChatRequest, second: ChatRequest) -> int:
    """Tokens of the longest common prefix of two requests' messages."""
    a = "".join(str(m["content"]) for m in first.messages)
    b = "".join(str(m["content"]) for m in second.messages)
    shared = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return _tokens(a[: min(len(a), len(b)) if shared is None else shared])


# Prices an estimate of a run with no disciplines (an empty selection is refused before this).
_EXAMPLE = Discipline("Example field", None, "Example discipline", ("Example field", "Example"))


def _tokens(value: ChatRequest | str) -> int:
    """About four characters a token, over every message of a request."""
    if isinstance(value, ChatRequest):
        value = "".join(str(m["content"]) for m in value.messages)
    return max(1, len(value) // 4)
