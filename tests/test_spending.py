"""No surprise bills (issue 10, item 5): an empty selection is an error, a spending cap stops a
run cleanly before it would pass it, and a run of the whole taxonomy asks first."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pexpect
import pytest

from conftest import API_KEY, cli_env, read_rows, write_config
from glan import api
from glan.config import GenerateConfig
from glan.costs.budget import UNBOUNDED_REPLY, Budget, CapReached, sequels, worst_case
from glan.costs.prices import Price, PriceTable
from glan.engine.ray.workers import Meter
from glan.items import Item
from glan.llm.types import ChatRequest
from glan.stages.pipeline import Pipeline
from inprocess import run_glan
from test_cli import generate_args


@pytest.mark.parametrize("command", ["generate", "estimate"])
@pytest.mark.parametrize("value", ["", "   ", " , ,"])
def test_an_empty_disciplines_option_is_an_error(tmp_path, teacher, command, value):
    """``--disciplines "$UNSET"`` once selected all 126 disciplines (56,380 pairs, $25)."""
    args = [command, "--out", str(tmp_path / "run"), "--disciplines", value]
    if command == "generate":
        args += ["--base-url", teacher.base_url, "--api-key", API_KEY]
    result = run_glan(*args)
    assert result.returncode == 1
    assert "--disciplines is" in result.stderr and "leave the option out" in result.stderr
    assert teacher.request_count == 0
    assert not (tmp_path / "run").exists()


def test_an_empty_disciplines_list_in_a_config_file_is_an_error(tmp_path, teacher):
    config = tmp_path / "run.yaml"
    config.write_text("disciplines: []\n", encoding="utf-8")
    result = run_glan("estimate", "--config", str(config))
    assert result.returncode == 1
    assert "selection of disciplines is empty" in result.stderr


# -- the spending cap -----------------------------------------------------------------------------

PRICES = (
    "models:\n"
    "  teacher-big: {input: 2.0, output: 8.0}\n"
    "  teacher-small: {input: 1.0, output: 2.0}\n"
)
# max_tokens near what the fake teacher writes, so that a request's worst case is not far above
# what it costs, and a small cap still lets the run get somewhere
TIGHT = {
    "subjects": {"max_tokens": 1500},
    "syllabus": {"max_tokens": 1500},
    "question": {"max_tokens": 400},
    "answer": {"max_tokens": 400},
}


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES, encoding="utf-8")
    return path


def sent_twice(teacher) -> list[bytes]:
    """Request bodies the teacher received more than once."""
    counts = Counter(orjson.dumps(body, option=orjson.OPT_SORT_KEYS) for body in teacher.requests)
    return [body for body, count in counts.items() if count > 1]


def capped_args(run: Path, teacher, prices: Path, cap: float, *extra: str) -> list[str]:
    args = generate_args(run, teacher.base_url, "--prices", str(prices))
    return [*args, "--max-cost", str(cap), *extra]


def test_a_capped_run_stops_before_the_cap_and_a_higher_cap_resumes(tmp_path, teacher, prices):
    full = api.generate(
        GenerateConfig.load(
            None,
            **{
                "base_url": teacher.base_url,
                "api_key": API_KEY,
                "model": "teacher-big",
                "answer_model": "teacher-small",
                "disciplines": ["Mathematics", "Chemistry"],
                "subject_queries": 2,
                "max_subjects_per_discipline": 2,
                "questions_per_syllabus": 3,
                "prices": str(prices),
            },
        ),
        tmp_path / "uncapped",
        progress="none",
    )
    assert full.complete and full.cost > 0
    teacher.reset()
    cap = round(full.cost * 0.6, 4)
    run = tmp_path / "run"
    args = capped_args(run, teacher, prices, cap, "--model", "teacher-big")
    args += ["--answer-model", "teacher-small"]

    stopped = run_glan(*args)
    assert stopped.returncode == 4, stopped.stderr
    assert "Traceback" not in stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if "cost cap" in line]
    assert len(lines) == 1 and f"of --max-cost ${cap:,.2f}" in lines[0]
    assert "higher --max-cost to continue" in lines[0]
    status = api.status(run, prices=PriceTable.load(prices))
    assert 0 < status.cost <= cap
    assert not status.complete and status.failed == 0  # left pending, not failed
    assert f"${status.cost:,.2f} spent of" in lines[0]
    asked = teacher.request_count

    # The same cap again: nothing fits, nothing is sent, the same answer.
    again = run_glan(*args)
    assert again.returncode == 4 and teacher.request_count == asked

    # A higher cap continues where the run stopped, and nothing is asked twice.
    args[args.index("--max-cost") + 1] = "10"
    resumed = run_glan(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_rows(run)) == 12
    assert sent_twice(teacher) == []
    assert teacher.request_count == sum(s.requests for s in full.stages.values())


@pytest.mark.parametrize("share", [0.3, 0.5, 0.8])
def test_the_cap_is_never_passed_whatever_runs_at_once(tmp_path, teacher, make_config, share):
    """Requests in flight reserve their worst case: with 8 at once, the spend still stays
    under the cap, and what was asked is stored (the rows are whole)."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    sized = {"prices": prices, "stages": TIGHT, "questions_per_syllabus": 5}
    full = api.generate(make_config(**sized), tmp_path / "full", progress="none")
    cap = full.cost * share
    result = api.generate(
        make_config(**sized, max_cost=cap, concurrency=8), tmp_path / "run", progress="none"
    )
    assert result.capped and result.max_cost == cap
    assert 0 < result.cost <= cap
    assert result.failed == 0
    stored = sum(s.requests for s in result.stages.values())
    assert stored == teacher.request_count - sum(s.requests for s in full.stages.values())


def test_a_cap_high_enough_changes_nothing(tmp_path, teacher, make_config, prices):
    result = api.generate(make_config(prices=prices, max_cost=100.0), tmp_path, progress="none")
    assert result.complete and not result.capped and len(read_rows(tmp_path)) == 12


def test_a_cap_needs_the_price_of_every_model(tmp_path, teacher):
    result = run_glan(
        *generate_args(tmp_path / "run", teacher.base_url),
        *("--model", "my-llama", "--answer-model", "gpt-4o-mini", "--max-cost", "5"),
    )
    assert result.returncode == 1
    assert "--max-cost needs the price of every model" in result.stderr
    assert "my-llama" in result.stderr and "gpt-4o-mini" not in result.stderr.split("none for")[1]
    assert teacher.request_count == 0


def test_max_cost_in_the_config_file(tmp_path, teacher, make_config, prices):
    config = write_config(tmp_path / "run.yaml", make_config(prices=prices, max_cost=0.0))
    result = run_glan("generate", "--out", str(tmp_path / "run"), "--config", str(config))
    assert result.returncode == 4
    assert "$0.00 spent of --max-cost $0.00" in result.stderr
    assert teacher.request_count == 0


async def test_the_budget_waits_for_room_then_refuses():
    budget = Budget(cap=1.0, spent=0.2)
    await budget.reserve(0.5)  # in flight: 0.7 of 1.0 taken
    waiting = asyncio.create_task(budget.reserve(0.4))
    await asyncio.sleep(0)
    assert budget.waiting == 1 and not waiting.done()
    budget.settle(0.5, 0.1)  # came back at a fraction of its worst case: 0.3 spent
    await waiting
    assert budget.in_flight == 1 and budget.reserved == pytest.approx(0.4)
    refused = asyncio.create_task(budget.reserve(0.5))  # 0.3 + 0.4 + 0.5 > 1: waits
    await asyncio.sleep(0)
    assert not refused.done()
    budget.settle(0.4, 0.3)  # 0.6 spent, nothing in flight: 0.5 cannot fit
    with pytest.raises(CapReached):
        await refused
    assert budget.exhausted and budget.spent == pytest.approx(0.6)


async def test_a_question_is_asked_only_while_its_answer_fits_too():
    """Questions whose answers the cap cannot pay for would be money for nothing: each holds
    the room of its answer until the answer reserves its own."""
    budget = Budget(cap=1.0, sequels={"question": ("answer", 0.3)})
    await budget.reserve(0.2, "question")  # 0.2 in flight, 0.3 held
    budget.settle(0.2, 0.1)
    await budget.reserve(0.2, "question")  # 0.1 + 0.3 + 0.2 + 0.3 fits in 1.0
    budget.settle(0.2, 0.1)
    with pytest.raises(CapReached):  # 0.2 + 0.6 + 0.2 + 0.3 does not
        await budget.reserve(0.2, "question")
    for _ in range(2):  # yet both answers are asked: each takes its question's hold
        await budget.reserve(0.3, "answer")
        budget.settle(0.3, 0.2)
    assert budget.spent == pytest.approx(0.6) and budget.held == 0


async def test_on_ray_the_meter_holds_the_answers_room_for_every_worker():
    budget = Budget(cap=1.0, sequels={"question": ("answer", 0.3)})
    meter = Meter({}, PriceTable(models={}), budget)
    assert await meter.reserve_spend(0.5, "question")
    meter.settle_spend(0.5, 0.4)
    assert not await meter.reserve_spend(0.1, "question")  # 0.4 + 0.3 + 0.1 + 0.3 > 1
    assert meter.capped() and await meter.reserve_spend(0.3, "answer")


def test_the_room_held_covers_the_answer_and_the_last_reply(make_config):
    limits = {name: {"max_tokens": 100} for name in ("question", "answer", "followup", "reply")}
    config = make_config(stages=limits, turns=3)
    table = PriceTable(models={"teacher-small": Price(input=1.0, output=10.0)})
    stages = Pipeline(config).stages
    text = "word " * 70  # about the longest a 100-token reply can be, in English
    question = Item("q", "question", None, "", 0, {}, result={"question": text})
    answer = stages["answer"].request(Item("a", "answer", "q", "", 0, {}), question)
    messages = [{"role": role, "content": text} for role in ("user", "assistant") * 2]
    turn = Item("t", "reply", None, "", 0, {}, result={"messages": messages})
    followup = Item("f", "followup", None, "", 0, {}, result={"question": text})
    reply = stages["reply"].request(Item("r", "reply", "f", "", 0, {}, context=turn), followup)
    held = sequels(config, table)
    assert held["question"][0] == "answer" and held["followup"][0] == "reply"
    assert 0 < worst_case(table, answer) <= held["question"][1]
    assert worst_case(table, answer) < worst_case(table, reply) <= held["followup"][1]


@pytest.mark.parametrize("concurrency", [8, 32])
@pytest.mark.parametrize("share", [0.3, 0.6])
def test_a_capped_run_pays_for_no_question_it_cannot_answer(
    tmp_path, teacher, make_config, concurrency, share
):
    """All 20 questions fit in one wave of 32: without the answers' room held, they spent the
    whole cap and the run wrote no pair."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    sized = {"prices": prices, "stages": TIGHT, "questions_per_syllabus": 5}
    full = api.generate(make_config(**sized), tmp_path / "full", progress="none")
    narrow = full.stages["subjects"].cost + full.stages["syllabus"].cost
    cap = narrow + (full.cost - narrow) * share
    run = make_config(**sized, max_cost=cap, concurrency=concurrency)
    capped = api.generate(run, tmp_path / "run", progress="none")
    assert capped.capped and 0 < capped.cost <= cap
    assert 0 < capped.rows == capped.stages["answer"].done == capped.stages["question"].done


def test_a_capped_conversation_run_pays_for_no_follow_up_it_cannot_reply_to(
    tmp_path, teacher, make_config
):
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    tight = {**TIGHT, "followup": {"max_tokens": 400}, "reply": {"max_tokens": 400}}
    sized = {"prices": prices, "stages": tight, "questions_per_syllabus": 5, "turns": 2}
    full = api.generate(make_config(**sized), tmp_path / "full", progress="none")
    narrow = full.stages["subjects"].cost + full.stages["syllabus"].cost
    cap = narrow + (full.cost - narrow) * 0.8
    run = make_config(**sized, max_cost=cap, concurrency=32)
    capped = api.generate(run, tmp_path / "run", progress="none")
    stages = capped.stages
    assert capped.capped and 0 < capped.cost <= cap
    assert stages["answer"].done == stages["question"].done
    assert 0 < capped.rows == stages["reply"].done == stages["followup"].done


def test_the_worst_case_of_a_request_is_its_prompt_and_max_tokens():
    table = PriceTable(models={"m": Price(input=1.0, output=10.0)}, batch_discount=0.5)
    request = ChatRequest(model="m", messages=({"role": "user", "content": "x" * 3000},))
    prompt = len(request.wire) // 3 + 1  # more tokens than the usual 4 characters a token
    assert prompt > 1000
    assert worst_case(table, request) == pytest.approx((prompt + UNBOUNDED_REPLY * 10) / 1e6)
    bounded = replace(request, max_tokens=1000)
    prompt = len(bounded.wire) // 3 + 1
    assert worst_case(table, bounded) == pytest.approx((prompt + 10_000) / 1e6)
    assert worst_case(table, bounded, batch=True) == pytest.approx((prompt + 10_000) / 2e6)


# -- what a big run asks before it starts ---------------------------------------------------------

SMALL_TAXONOMY = """\
fields:
  - name: Formal Science
    children:
      - name: Mathematics
  - name: Natural Science
    children:
      - name: Chemistry
"""
EXPENSIVE = "models:\n  dear-model: {input: 400.0, output: 400.0}\n"  # USD per million tokens


@pytest.fixture
def big(tmp_path: Path, teacher) -> list[str]:
    """Options of a run of a whole (two-discipline) taxonomy whose plan is over $10."""
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text(SMALL_TAXONOMY, encoding="utf-8")
    prices = tmp_path / "expensive.yaml"
    prices.write_text(EXPENSIVE, encoding="utf-8")
    return [
        *("--taxonomy", str(taxonomy), "--prices", str(prices), "--model", "dear-model"),
        *("--base-url", teacher.base_url, "--api-key", API_KEY, "--progress", "none"),
        *("--subject-queries", "1", "--max-subjects-per-discipline", "2"),
        *("--questions-per-syllabus", "2"),
    ]


def test_a_big_run_without_a_cap_asks_first(tmp_path, teacher, big):
    run = tmp_path / "run"
    planned = run_glan("estimate", *big[:10], *big[12:])  # all but --progress
    assert planned.returncode == 0
    assert "glan generate will ask before it starts" in planned.stdout

    refused = run_glan("generate", "--out", str(run), *big)
    assert refused.returncode == 1
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert "the whole taxonomy (2 disciplines), estimated at $" in line
    assert "pass --yes to start it, or --max-cost USD" in line
    assert teacher.request_count == 0 and not run.exists()

    started = run_glan("generate", "--out", str(run), *big, "--yes")
    assert started.returncode == 0, started.stderr
    assert len(read_rows(run)) == 2 * 2 * 2

    # The same plan again (a resume) does not ask twice; a bigger one does.
    again = run_glan("generate", "--out", str(run), *big)
    assert again.returncode == 0, again.stderr
    bigger = [*big[:-1], "4"]
    asked = run_glan("generate", "--out", str(run), *bigger)
    assert asked.returncode == 1 and "estimated at $" in asked.stderr
    assert len(read_rows(run)) == 8


def test_a_cap_is_an_answer_too(tmp_path, teacher, big):
    result = run_glan("generate", "--out", str(tmp_path / "run"), *big, "--max-cost", "1000")
    assert result.returncode == 0, result.stderr
    assert "stops before $1,000.00 in all (--max-cost)" in result.stderr


def test_a_named_selection_over_ten_dollars_asks_too(tmp_path, teacher, big):
    run = str(tmp_path / "run")
    result = run_glan("generate", "--out", run, *big, "--disciplines", "Chemistry")
    assert result.returncode == 1
    assert "asks for 1 discipline, estimated at $" in result.stderr
    assert teacher.request_count == 0


def test_an_unpriced_model_asks_only_for_a_big_plan(tmp_path, teacher):
    """No dollar estimate: a plan of over 20,000 calls asks; a small one does not."""
    unpriced = [
        *("--model", "my-llama", "--base-url", teacher.base_url, "--api-key", API_KEY),
        *("--subject-queries", "1", "--max-subjects-per-discipline", "1", "--progress", "none"),
    ]
    big = run_glan(
        "generate", "--out", str(tmp_path / "big"), *unpriced, "--questions-per-syllabus", "100"
    )
    assert big.returncode == 1
    assert "the whole taxonomy (126 disciplines), 25,704 calls to a model missing" in big.stderr
    assert "price it with --prices FILE" in big.stderr
    small = run_glan(
        *("generate", "--out", str(tmp_path / "small"), *unpriced),
        *("--questions-per-syllabus", "1", "--disciplines", "Chemistry,Mathematics"),
    )
    assert small.returncode == 0, small.stderr
    assert len(read_rows(tmp_path / "small")) == 2


def test_the_python_api_asks_for_confirmed(tmp_path, teacher, big):
    taxonomy, prices = big[1], big[3]
    config = GenerateConfig(
        taxonomy=taxonomy,
        prices=prices,
        model="dear-model",
        base_url=teacher.base_url,
        api_key=API_KEY,
        subject_queries=1,
        max_subjects_per_discipline=1,
        questions_per_syllabus=1,
    )
    assert api.confirmation_needed(config, tmp_path / "run") is not None
    with pytest.raises(api.NotConfirmed, match="confirmed=True"):
        api.generate(config, tmp_path / "run", progress="none")
    assert teacher.request_count == 0
    result = api.generate(config, tmp_path / "run", progress="none", confirmed=True)
    assert result.complete
    assert api.confirmation_needed(config, tmp_path / "run") is None


@pytest.mark.parametrize("answer", ["n", "y"])
def test_at_a_terminal_the_run_asks(tmp_path, teacher, big, answer):
    env = {**cli_env(), "TERM": "dumb", "COLUMNS": "200"}
    run = tmp_path / "run"
    args = ["-m", "glan", "generate", "--out", str(run), *big]
    session = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=60)
    try:
        session.expect_exact("and has no --max-cost. Start it? [y/N]: ")
        session.sendline(answer)
        session.expect(pexpect.EOF)
    finally:
        session.close()
    if answer == "n":
        assert session.exitstatus == 1
        assert "not started; nothing was sent." in session.before
        assert teacher.request_count == 0
    else:
        assert session.exitstatus == 0
        assert len(read_rows(run)) == 8
