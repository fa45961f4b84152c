"""glan eval (GLAN-Test): two candidate servers and a judge on 127.0.0.1, the held-out split of
the run, scores in both orders, per discipline and field, a resume that asks nothing twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY
from glan import api
from glan.loop.eval import Side, evaluate
from glan.publish.export import export
from glan.publish.report import report
from glan.testing.fake_teacher import FakeTeacher


@pytest.fixture
def run(tmp_path: Path, make_config: Any) -> Path:
    out = tmp_path / "run"
    api.generate(make_config(), out, progress="none")  # 12 pairs, 2 disciplines
    return out


@pytest.fixture
def candidates() -> Any:
    with FakeTeacher() as a, FakeTeacher() as b:
        a.reply_with("", "ALPHA answers: the result is 42.")
        b.reply_with("", "BRAVO answers: it might be 41.")
        yield a, b


def test_glan_test_scores_both_orders_per_discipline(run, teacher, candidates, make_config):
    a, b = candidates
    # the judge prefers ALPHA, and gives whichever answer it reads first a little more
    teacher.reply_with("ANSWER 1 ---\\nALPHA", {"score_1": 9, "score_2": 4, "reason": "A is right"})
    teacher.reply_with("ANSWER 1 ---\\nBRAVO", {"score_1": 6, "score_2": 8, "reason": "A is right"})
    before = teacher.request_count
    plans: list[Any] = []
    result = evaluate(
        run,
        Side(a.base_url, "alpha"),
        Side(b.base_url, "bravo"),
        make_config(judge_model="the-judge"),
        per_discipline=2,
        seed=5,
        plan=plans.append,
    )
    assert plans[0].questions == 4 and plans[0].calls == 16
    assert a.request_count == b.request_count == 4  # one answer per held-out question
    judged = teacher.requests[before:]
    assert len(judged) == 8 and {r["model"] for r in judged} == {"the-judge"}
    assert {r["model"] for r in a.requests} == {"alpha"}
    # the questions are exactly the export's test split with the same seed
    split = export(run, out=run.parent / "export", test_per_discipline=2, seed=5)
    test_ids = {json.loads(line)["id"] for line in (split.out / "test.jsonl").open()}
    asked = {r["messages"][0]["content"] for r in a.requests}
    rows = {
        json.loads(line)["id"]: json.loads(line) for line in (run / "instructions.jsonl").open()
    }
    assert asked == {rows[i]["messages"][0]["content"] for i in test_ids}

    overall = result.overall
    assert overall["questions"] == 4 and overall["mean_a"] == 8.5 and overall["mean_b"] == 5.0
    assert (overall["wins_a"], overall["ties"], overall["wins_b"]) == (4, 0, 0)
    assert overall["order_effect"] == 1.5  # (9 + 6) / 2 first, (4 + 8) / 2 second
    assert sorted(result.disciplines) == ["Chemistry", "Mathematics"]
    assert all(d["questions"] == 2 for d in result.disciplines.values())
    saved = json.loads(Path(result.saved_to).read_text())
    assert saved["overall"] == overall and "api_key" not in saved["a"]

    again = evaluate(
        run,
        Side(a.base_url, "alpha"),
        Side(b.base_url, "bravo"),
        make_config(judge_model="the-judge"),
        per_discipline=2,
        seed=5,
    )
    assert a.request_count == b.request_count == 4 and teacher.request_count - before == 8
    assert again.overall == overall
    page = report(run, run.parent / "report.html").read_text()
    assert "GLAN-Test" in page and "A = alpha vs B = bravo" in page and "+1.50" in page


def test_a_failed_judgement_is_retried_by_the_next_run(run, teacher, candidates, make_config):
    a, b = candidates
    teacher.always_fail("ANSWER 1 ---\\nBRAVO", "500")
    config = make_config(judge_model="j", max_retries=0)
    first = evaluate(run, Side(a.base_url), Side(b.base_url), config, per_discipline=1)
    assert first.pending == 2 and first.overall["questions"] == 0 and first.failed == 2
    teacher.reset()
    before = teacher.request_count
    second = evaluate(run, Side(a.base_url), Side(b.base_url), config, per_discipline=1)
    assert second.pending == 0 and second.overall["questions"] == 2
    assert teacher.request_count - before == 2  # only the two failed judgements
    assert a.request_count == 2


def test_eval_cli_prints_the_table_and_fails_in_one_line(run, teacher, candidates, cli, tmp_path):
    a, b = candidates
    args = ["eval", str(run), "--a", a.base_url, "--b", b.base_url, "--judge-model", "j"]
    config = tmp_path / "judge.yaml"
    config.write_text(f"base_url: {teacher.base_url}\napi_key: {API_KEY}\n", encoding="utf-8")
    result = cli(*args, "--config", str(config), "--per-discipline", "1", "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert "GLAN-Test" in result.stdout and "overall" in result.stdout
    assert "plan: 2 held-out questions" in result.stderr
    result = cli("eval", str(tmp_path / "nowhere"), "--a", a.base_url, "--b", b.base_url)
    assert result.returncode == 1 and "is not a glan run directory" in result.stderr
    assert "Traceback" not in result.stderr
