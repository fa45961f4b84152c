"""Prefix caching, counted (issue 10, item 4): the question prompts of a subject share its
syllabus as a byte-identical prefix, the cached-token counts servers report are read, stored and
priced at the cached rate, and status, estimate and report show the cached share."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from glan import api
from glan.costs.prices import Price, PriceTable
from glan.llm.types import ChatResponse, unpack_request
from glan.prompts import render
from glan.run.store import Store
from glan.testing.fake_teacher import PrefixCache
from inprocess import run_glan

PER_QUESTION = "The students have now studied"


def common_prefix(a: str, b: str) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def body(content: str, usage: dict) -> dict:
    return {"choices": [{"message": {"content": content}}], "usage": usage, "model": "m"}


@pytest.mark.parametrize(
    ("usage", "cached"),
    [
        (
            {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 64}},
            64,
        ),  # OpenAI, vLLM
        ({"prompt_tokens": 100, "prompt_cache_hit_tokens": 32}, 32),  # DeepSeek
        ({"prompt_tokens": 100, "prompt_tokens_details": None}, 0),
        ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": None}}, 0),
        ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": "x"}}, 0),
        ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 500}}, 100),
        ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": -5}}, 0),
        ({"prompt_tokens": 100}, 0),
    ],
)
def test_cached_tokens_are_read_from_the_usage(usage, cached):
    assert ChatResponse.from_openai(body("x", usage)).cached_tokens == cached


def test_cached_input_has_its_own_rate_and_defaults_to_the_input_rate():
    table = PriceTable(
        models={
            "cached": Price(input=2.0, cached_input=0.5, output=8.0),
            "plain": Price(input=2.0, output=8.0),
        }
    )
    million = 1_000_000
    assert table.cost("cached", million, 0, cached=million // 2) == pytest.approx(1.0 + 0.25)
    assert table.cost("plain", million, 0, cached=million // 2) == pytest.approx(2.0)
    assert table.cost("cached", million, 0, batch=True, cached=million) == pytest.approx(0.25)
    assert table.cost("cached", 10, 0, cached=50) == table.cost("cached", 10, 0, cached=10)
    bundled = PriceTable.load()
    price = bundled.price("gpt-4o-mini")
    assert price is not None and price.cached < price.input


def test_the_fake_teacher_caches_prefixes_in_blocks():
    cache = PrefixCache()
    syllabus = "a syllabus " * 40  # 440 characters: 6 whole blocks
    first = {"model": "m", "messages": [{"role": "user", "content": syllabus + "question 1"}]}
    second = {"model": "m", "messages": [{"role": "user", "content": syllabus + "question 2"}]}
    other_model = {**second, "model": "n"}
    assert cache.read(first) == 0
    hit = cache.read(second)
    shared = len("<user>" + syllabus + "question ")  # the role is part of the prompt
    assert hit % PrefixCache.BLOCK == 0 and shared - PrefixCache.BLOCK < hit <= shared
    assert cache.read(other_model) == 0


def test_question_prompts_of_a_subject_share_the_syllabus_byte_for_byte(
    tmp_path, teacher, make_config
):
    config = make_config(questions_per_syllabus=6)
    api.generate(config, tmp_path, progress="none")
    by_subject: dict[str, list[str]] = defaultdict(list)
    for request in teacher.requests:
        prompt = request["messages"][0]["content"]
        if PER_QUESTION in prompt:
            subject = re.match(r'You are a teacher of "([^"]+)"', prompt)
            assert subject is not None
            by_subject[subject.group(1)].append(prompt)
    assert len(by_subject) == 4 and all(len(p) == 6 for p in by_subject.values())
    store = Store.open(tmp_path)
    try:
        outlines = {
            node.data["subject"]: render("syllabus_outline", sessions=node.result["sessions"])
            for node in store.nodes("subject", "done")
        }
    finally:
        store.close()
    for subject, prompts in by_subject.items():
        prefixes = {p[: p.index(PER_QUESTION)] for p in prompts}
        assert len(prefixes) == 1, subject  # everything before the per-question part is shared
        (prefix,) = prefixes
        assert prefix.startswith(f'You are a teacher of "{subject}"')
        assert outlines[subject] in prefix  # the whole syllabus
        assert "Reply with the question only" in prefix  # and the instructions
        # what differs per question is short: the sessions and key concepts it is about
        shared = min(common_prefix(prompts[0], p) for p in prompts[1:])
        assert all(len(p) - shared < 600 for p in prompts)


def test_cached_tokens_are_stored_priced_and_shown(tmp_path, teacher, make_config):
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "models:\n"
        "  teacher-big: {input: 2.0, cached_input: 0.2, output: 8.0}\n"
        "  teacher-small: {input: 1.0, output: 2.0}\n",
        encoding="utf-8",
    )
    config = make_config(questions_per_syllabus=5, prices=prices)
    result = api.generate(config, tmp_path / "run", progress="none")

    store = Store.open(tmp_path / "run")
    try:
        rows = store.db.execute(
            "SELECT request, cached_tokens, prompt_tokens FROM calls WHERE stage = 'question'"
        ).fetchall()
    finally:
        store.close()
    by_subject: dict[str, list[int]] = defaultdict(list)
    for request, cached, prompt_tokens in rows:
        content = unpack_request(request)["body"]["messages"][0]["content"]
        by_subject[content[: content.index(PER_QUESTION)]].append(cached)
        assert 0 <= cached <= prompt_tokens
    # The first question of each subject pays for its prefix; the four after it read it from
    # the teacher's cache.
    assert len(by_subject) == 4
    for cached in by_subject.values():
        assert sorted(cached)[0] == 0 and all(c > 0 for c in sorted(cached)[1:])

    questions = result.stages["question"]
    assert questions.tokens_cached == sum(c for _, c, _ in rows) > 0
    assert 0.5 < questions.cached_share < 1
    table = PriceTable.load(prices)
    full = table.cost("teacher-big", questions.tokens_in, questions.tokens_out)
    assert questions.cost == pytest.approx(
        table.cost(
            "teacher-big", questions.tokens_in, questions.tokens_out, cached=questions.tokens_cached
        )
    )
    assert questions.cost < full

    shown = run_glan("status", str(tmp_path / "run"))
    assert shown.returncode == 0
    assert "cached" in shown.stdout
    assert f"{questions.cached_share:.0%}" in shown.stdout
    assert "of the prompt tokens were read from the provider's cache" in shown.stdout


def test_a_teacher_that_reports_no_cache_shows_none(tmp_path, teacher, make_config):
    teacher.prefix_cache = None
    result = api.generate(make_config(), tmp_path, progress="none")
    assert result.cached_share == 0
    shown = run_glan("status", str(tmp_path))
    assert "cached" not in shown.stdout


def test_the_estimate_expects_the_repeated_syllabus_to_be_cached():
    plan = run_glan("estimate", "--disciplines", "Mathematics")
    assert plan.returncode == 0, plan.stderr
    assert "cached" in plan.stdout and "prefix cache" in plan.stdout
    config = api.GenerateConfig(disciplines=["Mathematics"])
    stages = {s.stage: s for s in api.plan(config)}
    assert stages["question"].tokens_cached > 0 and stages["syllabus"].tokens_cached > 0
    assert stages["answer"].tokens_cached == 0
    # one question per syllabus repeats nothing; one turn repeats no draft
    single = {
        s.stage: s
        for s in api.plan(
            config.model_copy(update={"questions_per_syllabus": 1, "single_turn": True})
        )
    }
    assert single["question"].tokens_cached == 0 and single["syllabus"].tokens_cached == 0
    # priced at the cached rate: cheaper than the same tokens at the input rate
    question = stages["question"]
    uncached = PriceTable.load().cost(question.model, question.tokens_in, question.tokens_out)
    assert question.cost is not None and uncached is not None and question.cost < uncached
