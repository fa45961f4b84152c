"""The whole pipeline through the Python API, against the fake teacher over real HTTP."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from conftest import read_rows
from glan import api
from glan.run.store import Store
from glan.testing.fake_teacher import FakeTeacher

META_KEYS = {
    "field",
    "sub_field",
    "discipline",
    "subject",
    "level",
    "sessions",
    "key_concepts",
    "question_type",
    "question_model",
    "answer_model",
    "prompt_version",
    "seed",
}


def test_full_run_produces_every_pair_with_lineage(tmp_path, teacher, make_config):
    config = make_config(challenging_ratio=0.5, questions_per_syllabus=6)
    result = api.generate(config, tmp_path, progress="none")

    rows = read_rows(tmp_path)
    assert len(rows) == 2 * 2 * 6 == result.rows
    assert result.complete and result.failed == 0
    assert len({row["id"] for row in rows}) == len(rows)
    assert {row["meta"]["discipline"] for row in rows} == {"Mathematics", "Chemistry"}
    for row in rows:
        assert row["meta"].keys() >= META_KEYS
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"]
        assert assistant["role"] == "assistant" and assistant["content"]
        meta = row["meta"]
        assert meta["question_model"] == "teacher-big"
        assert meta["answer_model"] == "teacher-small"
        assert meta["field"] in {"Formal Science", "Natural Science"}
        assert 1 <= len(meta["key_concepts"]) <= 5
        assert len(meta["sessions"]) == (1 if meta["question_type"] == "basic" else 2)
    assert {row["meta"]["question_type"] for row in rows} == {"basic", "challenging"}

    # Each answer request carries exactly its own question (no misaligned answers).
    store = Store.open(tmp_path)
    for row in rows:
        question = store.get(row["meta"]["question_id"])
        assert question is not None
        assert question.result["question"] == row["messages"][0]["content"]
    store.close()

    # Stage by stage: 2 queries x 2 turns, 4 syllabi x 2 turns, 24 questions, 24 answers.
    status = api.status(tmp_path)
    assert {name: s.requests for name, s in status.stages.items()} == {
        "subjects": 2 * 2 * 2,
        "syllabus": 4 * 2,
        "question": 24,
        "answer": 24,
    }
    assert teacher.request_count == 8 + 8 + 24 + 24
    # The answers used their own model and the paper's answer sampling.
    answer_bodies = [b for b in teacher.requests if b["model"] == "teacher-small"]
    assert len(answer_bodies) == 24
    assert {(b["temperature"], b["top_p"]) for b in answer_bodies} == {(0.7, 0.95)}


def test_structured_turns_send_a_json_schema(tmp_path, teacher, make_config):
    api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    structured = [b for b in teacher.requests if "response_format" in b]
    # the second turn of each subject query and each syllabus
    assert len(structured) == 4 + 4
    assert all(b["response_format"]["type"] == "json_schema" for b in structured)
    first_turns = [
        b
        for b in teacher.requests
        if len(b["messages"]) == 1 and "syllabus" in b["messages"][0]["content"]
    ]
    assert first_turns and all("response_format" not in b for b in first_turns)


def test_single_turn_asks_for_json_at_once(tmp_path, teacher, make_config):
    api.generate(make_config(single_turn=True, questions_per_syllabus=1), tmp_path, progress="none")
    assert len(read_rows(tmp_path)) == 4
    # 2 disciplines x 2 queries + 4 syllabi, one call each, all structured
    structured = [b for b in teacher.requests if "response_format" in b]
    assert len(structured) == 4 + 4
    assert all(len(b["messages"]) == 1 for b in structured)


def test_same_seed_same_prompts_and_ids_other_seed_other_specs(tmp_path, make_config):
    def run(directory: Path, seed: int) -> tuple[list[str], Counter[str]]:
        with FakeTeacher(api_key="sk-test") as fake:
            config = make_config(base_url=fake.base_url, seed=seed, questions_per_syllabus=4)
            api.generate(config, directory, progress="none")
            bodies = Counter(json.dumps(b, sort_keys=True) for b in fake.requests)
        return sorted(row["id"] for row in read_rows(directory)), bodies

    ids_a, bodies_a = run(tmp_path / "a", seed=7)
    ids_b, bodies_b = run(tmp_path / "b", seed=7)
    ids_c, _ = run(tmp_path / "c", seed=8)
    assert ids_a == ids_b
    assert bodies_a == bodies_b
    assert ids_a != ids_c


def test_a_second_run_sends_nothing(tmp_path, teacher, make_config):
    config = make_config()
    api.generate(config, tmp_path, progress="none")
    sent = teacher.request_count
    rows = read_rows(tmp_path)
    api.generate(config, tmp_path, progress="none")
    assert teacher.request_count == sent
    assert read_rows(tmp_path) == rows


def test_more_questions_later_keeps_the_first_ones(tmp_path, teacher, make_config):
    api.generate(make_config(questions_per_syllabus=2), tmp_path, progress="none")
    first = {row["id"]: row for row in read_rows(tmp_path)}
    before = teacher.request_count
    api.generate(make_config(questions_per_syllabus=3), tmp_path, progress="none")
    rows = read_rows(tmp_path)
    assert len(rows) == 12
    assert all(first[i] == row for i, row in ((r["id"], r) for r in rows) if i in first)
    assert len(first) == 8
    # only the 4 new questions and their 4 answers were asked
    assert teacher.request_count - before == 8


def test_faults_are_retried_and_the_counts_add_up(tmp_path, teacher, make_config):
    teacher.retry_after = "0"
    teacher.timeout_sleep = 3
    teacher.set_fault_rates(
        {
            "429": 0.1,
            "500": 0.1,
            "timeout": 0.03,
            "disconnect": 0.03,
            "malformed": 0.1,
            "truncated": 0.05,
        }
    )
    result = api.generate(make_config(timeout=1, max_retries=8), tmp_path, progress="none")
    rows = read_rows(tmp_path)
    answers = result.stages["answer"]
    assert len(rows) == answers.done
    questions = result.stages["question"]
    # three a syllabus made (a syllabus whose replies stayed malformed failed, with its reason)
    syllabi = result.stages["syllabus"].done
    assert syllabi >= 2 and questions.done + questions.pending + questions.failed == 3 * syllabi
    assert len({r["id"] for r in rows}) == len(rows)
    # everything either finished or is recorded as failed with a reason
    store = Store.open(tmp_path)
    failed = [
        n
        for kind in ("subject_query", "subject", "question", "answer")
        for n in store.nodes(kind, "failed")
    ]
    assert all(n.error for n in failed)
    store.close()
    assert result.failed == len(failed)
    # faults were really served (a clean run asks 8 + 8 + 12 + 12), and yet most got through
    assert teacher.request_count > 40
    assert len(rows) >= 6


def test_malformed_json_gets_a_repair_turn(tmp_path, teacher, make_config):
    teacher.script(["malformed"], match="Turn the syllabus you just wrote into JSON")
    api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    repairs = [b for b in teacher.requests if "could not be used" in b["messages"][-1]["content"]]
    assert len(repairs) == 1
    # the repair turn shows the model its bad reply
    assert repairs[0]["messages"][-2]["role"] == "assistant"
    assert len(read_rows(tmp_path)) == 4


def test_truncated_answer_is_kept_and_marked(tmp_path, teacher, make_config):
    teacher.script(["truncated"], match="knowledgeable, patient teacher")
    api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    rows = read_rows(tmp_path)
    assert sum(row["meta"]["truncated"] for row in rows) == 1


def test_a_row_that_keeps_failing_is_recorded_and_retried_next_run(tmp_path, teacher, make_config):
    teacher.always_fail("educator in Chemistry", fault="500")
    result = api.generate(make_config(max_retries=1), tmp_path, progress="none")
    rows = read_rows(tmp_path)
    assert {r["meta"]["discipline"] for r in rows} == {"Mathematics"}
    assert len(rows) == 6
    assert result.stages["subjects"].failed == 2
    assert any("HTTP 500" in error for _, _, error in result.errors)

    teacher.reset()
    result = api.generate(make_config(), tmp_path, progress="none")
    assert result.complete
    rows = read_rows(tmp_path)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12


def test_server_without_response_format_falls_back_to_the_prompt(tmp_path, teacher, make_config):
    teacher.response_format_mode = "reject"
    api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    assert len(read_rows(tmp_path)) == 4
    in_prompt = [b for b in teacher.requests if "JSON Schema" in b["messages"][-1]["content"]]
    assert in_prompt and all("response_format" not in b for b in in_prompt)


def test_json_wrapped_in_prose_is_extracted(tmp_path, teacher, make_config):
    teacher.response_format_mode = "ignore"
    api.generate(make_config(questions_per_syllabus=1), tmp_path, progress="none")
    assert len(read_rows(tmp_path)) == 4


def test_language_reaches_question_and_answer_prompts(tmp_path, teacher, make_config):
    api.generate(
        make_config(language="Korean", questions_per_syllabus=1), tmp_path, progress="none"
    )
    rows = read_rows(tmp_path)
    assert all(row["meta"]["language"] == "Korean" for row in rows)
    questions = [b for b in teacher.requests if "homework question" in b["messages"][0]["content"]]
    assert questions and all("in Korean" in b["messages"][0]["content"] for b in questions)
