"""Prices, the dry-run estimate against what a run really asks, and spend in status."""

from __future__ import annotations

import pytest

from glan import api
from glan.config import ConfigError
from glan.costs.prices import Price, PriceTable


def test_longest_prefix_prices_dated_snapshots():
    table = PriceTable.load()
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")
    assert table.price("my-local-llama") is None
    assert table.cost("my-local-llama", 10, 10) is None


def test_batch_is_discounted():
    table = PriceTable(batch_discount=0.5, models={"m": Price(input=1.0, output=2.0)})
    assert table.cost("m", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("m", 1_000_000, 1_000_000, batch=True) == pytest.approx(1.5)


def test_a_bad_price_file_is_a_clear_error(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: {input: cheap}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid price table"):
        PriceTable.load(path)


@pytest.mark.parametrize("single_turn", [False, True])
def test_the_estimate_matches_the_calls_a_run_makes(tmp_path, teacher, make_config, single_turn):
    config = make_config(single_turn=single_turn, model="gpt-4o", answer_model="gpt-4o-mini")
    plan = {stage.stage: stage for stage in api.plan(config)}
    result = api.generate(config, tmp_path, progress="none")
    assert {name: s.requests for name, s in result.stages.items()} == {
        name: plan[name].calls for name in result.stages
    }
    # tokens are estimates, but of the right order of magnitude (the fake's replies are short)
    for name, stage in result.stages.items():
        assert stage.tokens_in / 20 < plan[name].tokens_in < stage.tokens_in * 20


def test_spend_is_priced_per_stage_and_model(tmp_path, teacher, make_config):
    config = make_config(model="gpt-4o", answer_model="gpt-4o-mini")
    result = api.generate(config, tmp_path, progress="none")
    table = PriceTable.load()
    answers = result.stages["answer"]
    assert answers.cost == pytest.approx(
        table.cost(
            "gpt-4o-mini", answers.tokens_in, answers.tokens_out, cached=answers.tokens_cached
        )
    )
    questions = result.stages["question"]
    assert questions.cost == pytest.approx(
        table.cost(
            "gpt-4o", questions.tokens_in, questions.tokens_out, cached=questions.tokens_cached
        )
    )
    assert result.cost > answers.cost > 0


def test_estimate_and_generate_on_the_command_line(tmp_path, teacher, cli):
    args = [
        "--disciplines",
        "Mathematics",
        "--subject-queries",
        "1",
        "--max-subjects-per-discipline",
        "2",
        "--questions-per-syllabus",
        "2",
        "--model",
        "gpt-4o-mini",
    ]
    planned = cli("estimate", *args)
    assert planned.returncode == 0, planned.stderr
    assert "question" in planned.stdout and "total" in planned.stdout and "$" in planned.stdout
    assert teacher.request_count == 0

    run = cli(
        "generate",
        "--out",
        str(tmp_path),
        "--base-url",
        teacher.base_url,
        "--api-key",
        "sk-test",
        "--progress",
        "none",
        *args,
    )
    assert run.returncode == 0, run.stderr
    assert "plan: 14 calls" in run.stderr  # 2 subject turns + 2x2 syllabus turns + 4 + 4
    assert "spent" in run.stdout

    again = cli("estimate", "--out", str(tmp_path), *args)
    assert "already in" in again.stdout and "4 rows" in again.stdout
