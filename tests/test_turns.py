"""Conversations (``--turns N``, issue 14): after the answer, the student's follow-up and the
teacher's reply, turn after turn; against the fake teacher over real HTTP.

What these hold to: each turn is the server's reply to a request that holds exactly its own
conversation before it; a kill between turns resumes without asking anything twice; ``--turns 1``
is today's pipeline, row for row; raising ``--turns`` asks only the new turns and the longer
conversation replaces the question's row; the estimate, export, curation and report know turns.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, cli_env, read_rows
from glan import api
from glan.config import FOLLOWUP_KINDS, ConfigError, GenerateConfig
from glan.costs.progress import RunStats
from glan.curation.runner import CurateConfig, curate
from glan.curation.screen import Screener, turns_of
from glan.ids import canonical_json
from glan.items import META_KEYS, SINGLE_TURN_META
from glan.llm.types import unpack_request
from glan.prompts import prompts_for, render
from glan.publish.export import export
from glan.publish.report_data import gather
from glan.run import open_run
from glan.run.store import Store
from glan.testing.fake_teacher import FakeTeacher

# The rows of make_config() (seed 0, 2 disciplines x 2 subjects x 3 questions) as the pipeline made
# them before conversations existed (commit 87520a1): ids depend on the bundled subjects,
# syllabus and question templates and on the fake teacher; if a deliberate change of those moves
# them, record them again.
GOLDEN_IDS = {
    "327bf3e986f25e745ada",
    "3c4d228bf3e1f0a28acf",
    "54ece02e53f5eaa00a99",
    "5de4d6cfcb0c4f5874dd",
    "7105318e9dc1b8f577cd",
    "77e04cd05ccba45042a4",
    "80888c4517622d4a3c81",
    "8d6e6733648ee6644655",
    "9347434f4d7fed72c3c9",
    "b730cef7701eb83d73bf",
    "d5409b0ed910489c7ec3",
    "dc9d8d5c841a303c0fd9",
}
# subjects 2x2 queries x 2 turns, syllabi 4 x 2 turns, 12 questions, 12 answers
SINGLE_TURN_CALLS = 8 + 8 + 12 + 12


def reply_text(teacher: FakeTeacher, body: dict[str, Any]) -> str:
    """What the fake teacher answers to ``body`` (a pure function of it)."""
    status, completion = teacher.reply(body)
    assert status == 200
    return str(completion["choices"][0]["message"]["content"]).strip()


def test_three_turns_are_conversations_each_turn_the_reply_to_its_own(
    tmp_path, teacher, make_config
):
    result = api.generate(make_config(turns=3), tmp_path, progress="none")
    assert result.complete and result.rows == 12

    rows = read_rows(tmp_path)
    assert len(rows) == 12 and len({row["id"] for row in rows}) == 12
    system = render("answer_system", language=None)
    bodies = teacher.requests
    for row in rows:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert all(m["content"] for m in messages)
        meta = row["meta"]
        assert list(meta) == list(META_KEYS)
        assert meta["turns"] == 3 and len(meta["followup_kinds"]) == 2
        assert set(meta["followup_kinds"]) <= set(FOLLOWUP_KINDS)
        assert meta["prompt_version"] == prompts_for(None).conversation_version
        for turn in (2, 3):
            before = messages[: 2 * turn - 2]  # the conversation the follow-up continues, only
            # The student's follow-up: one prompt holding this conversation (and no other).
            asked = [
                b
                for b in bodies
                if len(b["messages"]) == 1
                and "Write your next message" in b["messages"][0]["content"]
                and all(m["content"] in b["messages"][0]["content"] for m in before)
                and messages[len(before)]["content"] not in b["messages"][0]["content"]
            ]
            assert len(asked) == 1, f"turn {turn} of {row['id']}: {len(asked)} follow-up prompts"
            prompt = asked[0]["messages"][0]["content"]
            assert meta["subject"] in prompt and "Session 1:" in prompt  # the syllabus outline
            assert all(concept in prompt for concept in meta["key_concepts"])
            assert reply_text(teacher, asked[0]) == messages[2 * turn - 2]["content"]
            # The teacher's reply: the answer's system prompt and the conversation, exactly.
            conversation = [{"role": "system", "content": system}, *messages[: 2 * turn - 1]]
            replied = [b for b in bodies if b["messages"] == conversation]
            assert len(replied) == 1
            assert reply_text(teacher, replied[0]) == messages[2 * turn - 1]["content"]

    # 24 follow-ups and 24 replies on top of the single-turn run
    assert teacher.request_count == SINGLE_TURN_CALLS + 24 + 24
    requests = {name: s.requests for name, s in result.stages.items()}
    assert requests == {
        "subjects": 8,
        "syllabus": 8,
        "question": 12,
        "answer": 12,
        "followup": 24,
        "reply": 24,
    }
    # The answer of turn 1 is no row of its own: only the conversation is.
    store = Store.open(tmp_path)
    try:
        kinds = dict(store.db.execute("SELECT kind, COUNT(*) FROM nodes WHERE out_seq > 0"))
    finally:
        store.close()
    assert kinds == {"reply": 12}


def test_turns_1_is_todays_pipeline(tmp_path, teacher, make_config):
    result = api.generate(make_config(), tmp_path, progress="none")
    rows = read_rows(tmp_path)
    assert {row["id"] for row in rows} == GOLDEN_IDS
    for row in rows:
        assert list(row["meta"]) == list(SINGLE_TURN_META)
        assert len(row["messages"]) == 2
        # the version of the templates a single-turn row uses: the conversation's are left out
        assert row["meta"]["prompt_version"] == prompts_for(None).version
    assert prompts_for(None).version != prompts_for(None).conversation_version
    assert teacher.request_count == SINGLE_TURN_CALLS
    assert list(result.stages) == ["subjects", "syllabus", "question", "answer"]
    store = Store.open(tmp_path)
    try:
        assert store.get_meta("turns") is None  # nothing of conversations in a single-turn run
        turns = "SELECT 1 FROM nodes WHERE kind IN ('followup', 'reply')"
        assert store.db.execute(turns).fetchone() is None
        assert store.get_meta("expansion") == _signature_before_conversations(make_config())
    finally:
        store.close()


def _signature_before_conversations(config: GenerateConfig) -> str:
    from glan.ids import stable_id

    return stable_id(
        config.subject_queries,
        config.max_subjects_per_discipline,
        config.questions_per_syllabus,
        config.challenging_ratio,
        config.seed,
    )


def test_raising_turns_asks_only_the_new_turns(tmp_path, teacher, make_config):
    api.generate(make_config(), tmp_path / "run", progress="none")
    single = read_rows(tmp_path / "run")
    teacher.reset()

    result = api.generate(make_config(turns=3), tmp_path / "run", progress="none")
    assert result.complete and result.rows == 12
    assert teacher.request_count == 24 + 24  # follow-ups and replies only
    assert all(_turn_request(b) for b in teacher.requests)
    lines = read_rows(tmp_path / "run")
    # instructions.jsonl only grows: the single-turn rows stay, each question's conversation comes
    # after; the dataset's readers see one row per question, its conversation
    assert lines[:12] == single
    conversations = lines[12:]
    assert {row["meta"]["question_id"] for row in conversations} == {
        row["meta"]["question_id"] for row in single
    }
    assert all(
        row["messages"][:2] == first["messages"]
        for row, first in _by_question(conversations, single)
    )
    run = open_run(tmp_path / "run")
    try:
        assert [row["id"] for _, row in run.rows()] == [row["id"] for row in conversations]
        assert len(list(run.questions_by_id(run.last_seq()))) == 12
    finally:
        run.close()
    curated = curate(tmp_path / "run", CurateConfig(language="any"))
    assert (curated.rows_in, curated.rows_kept) == (12, 12)
    exported = export(tmp_path / "run", out=tmp_path / "export")
    assert exported.rows == 12
    assert {row["id"] for row in _lines(tmp_path / "export")} == {r["id"] for r in conversations}

    # the same conversations as a run that asked for three turns from the start
    with FakeTeacher(api_key=API_KEY) as fresh:
        api.generate(
            make_config(turns=3, base_url=fresh.base_url), tmp_path / "fresh", progress="none"
        )
    assert sorted(conversations, key=lambda r: r["id"]) == sorted(
        read_rows(tmp_path / "fresh"), key=lambda r: r["id"]
    )

    # again: nothing to ask; lower: refused, nothing asked
    teacher.reset()
    api.generate(make_config(turns=3), tmp_path / "run", progress="none")
    assert teacher.request_count == 0
    with pytest.raises(ConfigError, match="holds conversations of 3 turns; --turns 2"):
        api.generate(make_config(turns=2), tmp_path / "run", progress="none")
    assert teacher.request_count == 0


def _turn_request(body: dict[str, Any]) -> bool:
    """A follow-up's prompt, or a reply's conversation (system prompt and three turns or more)."""
    messages = body["messages"]
    if messages[0]["role"] == "system":
        return len(messages) > 3
    return "Write your next message" in messages[0]["content"]


def _by_question(
    rows: list[dict[str, Any]], others: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_question = {row["meta"]["question_id"]: row for row in others}
    return [(row, by_question[row["meta"]["question_id"]]) for row in rows]


def test_a_kill_between_turns_resumes_without_asking_twice(tmp_path, teacher):
    teacher.latency = 0.1
    args = [
        sys.executable,
        "-m",
        "glan",
        "generate",
        *("--out", str(tmp_path), "--base-url", teacher.base_url, "--api-key", API_KEY),
        *("--disciplines", "Mathematics,Chemistry", "--subject-queries", "2"),
        *("--max-subjects-per-discipline", "2", "--questions-per-syllabus", "3"),
        *("--turns", "3", "--concurrency", "4", "--progress", "none"),
    ]
    process = subprocess.Popen(
        args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _stored(tmp_path, "reply") < 4:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    replies = _stored(tmp_path, "reply")
    assert 4 <= replies < 24, "the kill should land between turns"

    store = Store.open(tmp_path)
    stored = {
        canonical_json(unpack_request(blob)["body"])
        for (blob,) in store.db.execute("SELECT request FROM calls")
    }
    store.close()
    teacher.reset()
    teacher.latency = 0.0
    result = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resent = [b for b in teacher.requests if canonical_json(b) in stored]
    assert resent == [], "a request whose reply was stored went out again"
    rows = read_rows(tmp_path)
    assert len(rows) == 12 and len({row["id"] for row in rows}) == 12
    assert all(len(row["messages"]) == 6 for row in rows)
    store = Store.open(tmp_path)
    try:
        calls = dict(store.db.execute("SELECT stage, COUNT(*) FROM calls GROUP BY stage"))
    finally:
        store.close()
    assert calls["followup"] == calls["reply"] == 24


def _stored(run: Path, stage: str) -> int:
    """Replies of ``stage`` committed to a run's store (read while another process writes)."""
    if not (run / "glan.db").exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{run / 'glan.db'}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM calls WHERE stage = ?", (stage,)).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet
        return 0


def test_the_estimate_counts_the_turns(tmp_path, teacher, make_config):
    config = make_config(turns=3, model="gpt-4o", answer_model="gpt-4o-mini")
    plan = {stage.stage: stage for stage in api.plan(config)}
    assert plan["followup"].calls == plan["reply"].calls == 12 * 2
    assert plan["reply"].model == "gpt-4o-mini" and plan["followup"].model == "gpt-4o"
    result = api.generate(config, tmp_path, progress="none")
    assert {name: s.requests for name, s in result.stages.items()} == {
        name: p.calls for name, p in plan.items()
    }
    for name in ("followup", "reply"):
        assert result.stages[name].tokens_in / 20 < plan[name].tokens_in
        assert plan[name].tokens_in < result.stages[name].tokens_in * 20
    # the prompts grow with the conversation: five turns cost more than twice three per call
    five = {s.stage: s for s in api.plan(make_config(turns=5))}
    three = {s.stage: s for s in api.plan(make_config(turns=3))}
    assert five["reply"].calls == 2 * three["reply"].calls
    assert five["reply"].tokens_in > 2 * three["reply"].tokens_in
    assert "followup" not in {s.stage for s in api.plan(make_config())}


def test_export_layouts_of_conversations(tmp_path, teacher, make_config):
    run = tmp_path / "run"
    api.generate(make_config(turns=2), run, progress="none")
    rows = {row["id"]: row for row in read_rows(run)}

    messages = export(run, format="messages", out=tmp_path / "m")
    assert messages.first_turn_only == 0
    for line in _lines(tmp_path / "m"):
        assert line["messages"] == rows[line["id"]]["messages"]
        assert line["turns"] == 2 and len(line["followup_kinds"]) == 1

    export(run, format="sharegpt", out=tmp_path / "s")
    for line in _lines(tmp_path / "s"):
        assert [m["from"] for m in line["conversations"]] == ["human", "gpt"] * 2
        assert [m["value"] for m in line["conversations"]] == [
            m["content"] for m in rows[line["id"]]["messages"]
        ]

    alpaca = export(run, format="alpaca", out=tmp_path / "a")
    assert alpaca.first_turn_only == 12  # and the CLI says so
    for line in _lines(tmp_path / "a"):
        first, answer = rows[line["id"]]["messages"][:2]
        assert (line["instruction"], line["output"]) == (first["content"], answer["content"])

    parquet = export(run, format="messages", to="parquet", out=tmp_path / "p")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "p" / parquet.files[0])
    assert str(table.schema.field("turns").type) == "int64"
    assert str(table.schema.field("followup_kinds").type) == "list<element: string>"


def test_export_of_single_turn_rows_says_one_turn(tmp_path, teacher, make_config):
    api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    result = export(tmp_path, format="alpaca", out=tmp_path / "a")
    assert result.first_turn_only == 0
    assert {(r["turns"], tuple(r["followup_kinds"])) for r in _lines(tmp_path / "a")} == {(1, ())}


def _lines(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


REFUSAL = "I'm sorry, but I can't help with that."


def test_curation_screens_every_turn(tmp_path, teacher, make_config):
    api.generate(make_config(turns=3), tmp_path / "a", progress="none")
    victim = read_rows(tmp_path / "a")[5]
    # the third follow-up of one conversation is only in the request of its reply
    followup = victim["messages"][4]["content"]
    teacher.reply_with(json.dumps(followup.split(".")[0])[1:-1], REFUSAL)
    api.generate(make_config(turns=3), tmp_path / "b", progress="none")
    refused = [row for row in read_rows(tmp_path / "b") if row["messages"][5]["content"] == REFUSAL]
    assert [row["id"] for row in refused] == [victim["id"]]
    assert all(row["messages"][:5] == victim["messages"][:5] for row in refused)

    result = curate(tmp_path / "b", CurateConfig(language="any"))
    assert result.counts == {"refusal": 1}
    data = gather(tmp_path / "b")
    assert data.examples["refusal"][0]["id"] == victim["id"]
    assert data.examples["refusal"][0]["matched"]["turn"] == 3


def test_screening_turn_by_turn():
    screener = Screener(CurateConfig(language="any", dedup=False))
    question = "Explain why the derivative of x squared is two x, step by step."
    answer = "The derivative measures the rate of change; by the power rule it is 2x."
    follow = "Could you show the limit definition for that derivative, please?"
    good = [question, answer, follow, "Take the limit of ((x+h)^2 - x^2)/h as h goes to 0."]

    def row(*texts: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        roles = ["user", "assistant"] * len(texts)
        messages = [{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)]
        return turns_of({"id": "r", "messages": messages}), {}

    assert screener.screen(*row(*good)) is None
    assert screener.screen(*row(*good, follow, REFUSAL)) == (
        "refusal",
        {"matched": "I'm sorry", "turn": 3},
    )
    assert screener.screen(*row(*good, follow, "ok")) == (
        "too_short",
        {"part": "answer", "chars": 2, "min": 20, "turn": 3},
    )
    # a reply that quotes the student's attempt is no leak; a first answer that is all in its
    # question still is one
    attempt = "My attempt: " + answer
    assert screener.screen(*row(question, answer, attempt, answer)) is None
    assert screener.screen(*row(answer + " " + question, answer))[0] == "answer_leak"


def test_the_report_shows_turns_and_the_followup_mix(tmp_path, teacher, make_config):
    api.generate(make_config(turns=3), tmp_path, progress="none")
    data = gather(tmp_path)
    assert data.turns == {3: 12}
    assert sum(data.followup_kinds.values()) == 24
    assert set(data.followup_kinds) <= set(FOLLOWUP_KINDS)
    from glan.publish.report import report

    page = report(tmp_path).read_text(encoding="utf-8")
    assert 'id="conversations"' in page and "follow-up kind" in page
    assert all(f"<code>{kind}</code>" in page for kind in data.followup_kinds)


def test_followup_mix_steers_the_kinds(tmp_path, teacher, make_config):
    config = make_config(turns=3, followup_mix={"variant": 1, "check_attempt": 0})
    api.generate(config, tmp_path, progress="none")
    kinds = {k for row in read_rows(tmp_path) for k in row["meta"]["followup_kinds"]}
    assert kinds == {"variant"}
    bodies = [b["messages"][0]["content"] for b in teacher.requests if len(b["messages"]) == 1]
    assert sum("changed data" in b for b in bodies) == 24
    with pytest.raises(ConfigError, match="unknown follow-up kind nope"):
        GenerateConfig.load(None, followup_mix={"nope": 1})
    with pytest.raises(ConfigError, match="at least one above 0"):
        GenerateConfig.load(None, followup_mix={"variant": 0})


def test_conversations_through_the_batch_api(tmp_path, teacher, make_config):
    teacher.batch.delay = 0.05
    fast = {"batch": True, "batch_poll_interval": 0.05, "batch_flush_after": 0.2}
    api.generate(make_config(turns=2, **fast), tmp_path, progress="none")
    assert len(read_rows(tmp_path)) == 12
    store = Store.open(tmp_path)
    try:
        calls = dict(store.db.execute("SELECT stage, SUM(batch) FROM calls GROUP BY stage"))
    finally:
        store.close()
    assert calls == {
        "subjects": 0,
        "syllabus": 0,
        "question": 12,
        "answer": 12,
        "followup": 12,
        "reply": 12,
    }


def test_the_ray_engine_refuses_conversations(tmp_path, make_config):
    with pytest.raises(ConfigError, match="--turns above 1 needs --engine local"):
        api.generate(make_config(turns=2, engine="ray"), tmp_path, progress="none")


def test_progress_shows_the_turn_stages_of_conversations_only():
    assert RunStats(turns=1).shown() == ["subjects", "syllabus", "question", "answer"]
    stats = RunStats(turns=3, questions_per_syllabus=2)
    stats.stages["syllabus"].total = 5
    assert stats.shown()[-2:] == ["followup", "reply"]
    assert stats.projected_totals()["reply"] == 5 * 2 * 2
