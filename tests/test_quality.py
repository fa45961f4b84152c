"""glan judge: pairs judged and answers verified on the engine, against the fake teacher told to
be wrong on purpose for chosen pairs; curation, export and report use what was found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import API_KEY, cli_env, read_rows
from glan import api
from glan.curation import CurateConfig, CurationLog, curate
from glan.publish.export import export
from glan.publish.report import report
from glan.quality import judge
from glan.run.store import Store
from glan.stages.review import reviews
from glan.stages.verify import same_answer_key

GOOD = {
    "self_contained": 9,
    "on_syllabus": 9,
    "level": 8,
    "correct": 9,
    "complete": 9,
    "overall": 9,
    "reason": "A clear, correct worked answer.",
}
BAD = {**GOOD, "correct": 1, "overall": 2, "reason": "The final answer is wrong."}
RUBRIC = "Score it on this rubric"  # in every judge prompt
FINAL = "What is the final answer"  # in every final-answer request


def snippet(row: dict[str, Any], turn: int = 0) -> str:
    """A piece of a message's text that no other pair has (the fake teacher's prose)."""
    return row["messages"][turn]["content"][:40]


@pytest.fixture
def run(tmp_path: Path, make_config: Any) -> Path:
    out = tmp_path / "run"
    api.generate(make_config(), out, progress="none")  # 12 pairs
    return out


def test_the_judge_scores_every_pair_and_curate_removes_the_weak_one(run, teacher, make_config):
    rows = read_rows(run)
    weak = rows[3]
    teacher.reply_with(snippet(weak), BAD)
    teacher.reply_with(RUBRIC, GOOD)
    before = teacher.request_count
    summary = judge(run, make_config(judge=True, judge_model="the-judge"))
    assert summary.judged == summary.rows == 12 and summary.low == 1 and summary.failed == 0
    judged = [b for b in teacher.requests[before:] if RUBRIC in json.dumps(b)]
    assert len(judged) == 12 and {b["model"] for b in judged} == {"the-judge"}
    assert all(b["response_format"]["type"] == "json_schema" for b in judged)

    found = _reviews(run)
    assert found[weak["id"]].score == 2 and found[weak["id"]].reason == BAD["reason"]
    assert {r.score for i, r in found.items() if i != weak["id"]} == {9}

    result = curate(run, CurateConfig(min_score=5, dedup=False, language="any"))
    assert result.counts == {"low_score": 1} and result.rows_kept == 11
    store = Store.open(run)
    (removal,) = CurationLog(store).removals(result.id)
    store.close()
    assert removal.row_id == weak["id"]
    assert removal.matched == {"score": 2, "reason": "The final answer is wrong."}

    exported = export(run, to="parquet", out=run.parent / "export")
    table = pq.read_table(run.parent / "export" / exported.files[0]).to_pylist()
    assert len(table) == 11 and {r["judge_score"] for r in table} == {9}
    assert all(r["judge_reason"] == GOOD["reason"] for r in table)

    page = report(run, run.parent / "report.html").read_text()
    assert "Review: judge and verification" in page and "The final answer is wrong." in page


def test_verification_flags_the_answer_the_samples_contradict(run, teacher, make_config):
    rows = read_rows(run)
    doubtful = rows[5]
    # the extra answers to this question all end in 41; every other answer, its own included, in 7
    teacher.reply_with(snippet(doubtful), "Working it through, the final answer is 41.")
    teacher.reply_with("the final answer is 41", {"single": True, "final_answer": "41"})
    teacher.reply_with(FINAL, {"single": True, "final_answer": "7"})
    before = teacher.request_count
    summary = judge(run, make_config(verify=3), progress="none")
    assert teacher.request_count - before == 12 * (
        1 + 2 * 3
    )  # own extraction, 3 x (answer, extraction)
    assert summary.judged == 0 and summary.verified == 12 and summary.contradicted == 1

    found = _reviews(run)
    agreement = found[doubtful["id"]].agreement
    assert agreement is not None and (agreement.agree, agreement.of) == (0, 3)
    assert agreement.majority == "41" and agreement.contradicted
    assert all(r.agreement.share == 1.0 for i, r in found.items() if i != doubtful["id"])

    result = curate(run, CurateConfig(min_agreement=0.5, dedup=False, language="any"))
    assert result.counts == {"contradicted": 1}

    swapped = export(run, out=run.parent / "swapped", majority_answers=True, use_curation=False)
    assert swapped.majority_answers == 1
    lines = [json.loads(x) for x in (run.parent / "swapped" / "train.jsonl").open()]
    (row,) = [r for r in lines if r["id"] == doubtful["id"]]
    assert row["messages"][1]["content"].endswith("the final answer is 41.")
    assert row["majority_answer"] is True and row["agreement"] == 0.0


def test_open_questions_are_not_scored(run, teacher, make_config):
    teacher.reply_with(FINAL, {"single": False, "final_answer": ""})
    summary = judge(run, make_config(verify=1))
    assert summary.no_single_answer == 12 and summary.contradicted == 0
    result = curate(run, CurateConfig(min_agreement=1.0, dedup=False, language="any"))
    assert result.counts == {}  # nothing to compare, nothing removed


def test_a_review_asks_nothing_twice_and_raising_n_asks_only_the_new_samples(
    run, teacher, make_config
):
    teacher.reply_with(FINAL, {"single": True, "final_answer": "7"})
    judge(run, make_config(judge=True, verify=1))
    before = teacher.request_count
    judge(run, make_config(judge=True, verify=1))
    assert teacher.request_count == before
    judge(run, make_config(judge=True, verify=2))
    assert teacher.request_count - before == 12 * 2  # sample 2 of each: an answer, an extraction


def test_a_killed_review_resumes_without_asking_again(run, teacher, make_config, tmp_path):
    teacher.latency = 0.2
    teacher.reply_with(RUBRIC, GOOD)
    config = tmp_path / "c.yaml"
    config.write_text(f"concurrency: 2\nbase_url: {teacher.base_url}\n", encoding="utf-8")
    command = [sys.executable, "-m", "glan", "judge", str(run), "--config", str(config)]
    command += ["--api-key", API_KEY, "--progress", "none"]
    process = subprocess.Popen(command, env=cli_env(), start_new_session=True)
    deadline = time.monotonic() + 60
    while _done(run, "judgement") < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = _done(run, "judgement")
    assert 4 <= done < 12, "the kill should land mid-run"
    teacher.latency = 0
    before = teacher.request_count
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert teacher.request_count - before == 12 - done  # only the unjudged pairs are asked
    assert _done(run, "judgement") == 12


def test_the_estimate_counts_the_review_calls(run, teacher, make_config):
    teacher.reply_with(FINAL, {"single": True, "final_answer": "7"})
    config = make_config(judge=True, verify=2)
    plan = {stage.stage: stage.calls for stage in api.plan(config)}
    before = teacher.request_count
    judge(run, config)
    assert plan["judge"] + plan["verify"] == teacher.request_count - before == 12 * (1 + 1 + 4)


def test_judge_needs_something_to_do_and_a_run(run, cli, tmp_path):
    result = cli("judge", str(tmp_path / "nowhere"), "--api-key", API_KEY)
    assert result.returncode == 1 and "is not a glan run directory" in result.stderr
    result = cli("judge", str(run), "--no-judge", "--api-key", API_KEY)
    assert result.returncode == 1 and "nothing to review" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("curate", str(run), "--min-score", "5")
    assert result.returncode == 1 and "needs judged pairs" in result.stderr


def test_same_answer_key_merges_what_is_the_same_answer():
    assert same_answer_key("  42. ") == same_answer_key("42") == same_answer_key("42.0")
    assert same_answer_key("1,000 kg") == same_answer_key("1000 KG")
    assert same_answer_key("x = 3") == same_answer_key("X=3") != same_answer_key("x = 4")
    assert same_answer_key("0.5") != same_answer_key("1/2")


def _reviews(run: Path) -> dict[str, Any]:
    store = Store.open(run, readonly=True)
    try:
        return reviews(store)
    finally:
        store.close()


def _done(run: Path, kind: str) -> int:
    store = Store.open(run, readonly=True)
    try:
        return store.counts().get(kind, {}).get("done", 0)
    finally:
        store.close()


def test_coverage_counts_the_questions_on_each_session_and_concept(tmp_path, make_config, cli):
    out = tmp_path / "cover"
    api.generate(make_config(question_sampling="cover"), out, progress="none")
    subjects = api.coverage(out)
    assert len(subjects) == 4 and sum(s.questions for s in subjects) == 12
    rows = read_rows(out)
    assert sum(sum(s.sessions.values()) for s in subjects) == sum(
        len(r["meta"]["sessions"]) for r in rows
    )
    for s in subjects:  # cover: no session twice before every session once
        assert max(s.sessions.values()) <= 1 or s.sessions_used == len(s.sessions)
    result = cli("status", str(out), "--coverage")
    assert result.returncode == 0, result.stderr
    assert "coverage: questions per class session and key concept" in result.stdout
