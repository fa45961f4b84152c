"""``glan generate --batch``: the wide stages through a provider batch API (the fake's, over HTTP).

Each line of a batch is billed, so what these tests hold to is "never paid for twice": a killed
run polls the batches it created, and only lines without output are sent again.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from conftest import API_KEY, cli_env, read_rows, write_config
from glan import api
from glan.llm.batch.client import BatchClient
from glan.llm.batch.http import azure_options
from glan.llm.errors import RequestFailed
from glan.llm.types import ChatRequest
from glan.run.batches import MIGRATIONS, SqliteBatchRecords
from glan.run.store import Store
from glan.testing.fake_teacher import FakeTeacher

FAST = {
    "batch": True,
    "batch_max_requests": 12,  # the 12 questions (and 12 answers) of a run make exactly one batch
    "batch_poll_interval": 0.05,
    "batch_flush_after": 0.5,
}


@pytest.fixture
def fake(teacher: FakeTeacher) -> FakeTeacher:
    teacher.batch.delay = 0.1
    return teacher


def batch_command(run_dir: Path, config_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "glan",
        "generate",
        "--out",
        str(run_dir),
        "--config",
        str(config_path),
        "--batch",
        "--progress",
        "log",
    ]


def calls_by_stage(run_dir: Path) -> dict[tuple[str, int], int]:
    store = Store.open(run_dir)
    try:
        rows = store.db.execute("SELECT stage, batch, COUNT(*) FROM calls GROUP BY stage, batch")
        return {(stage, batch): count for stage, batch, count in rows}
    finally:
        store.close()


def ids_after(fake: FakeTeacher, first: int) -> Counter[str]:
    """custom_ids sent in the batches created after the first ``first`` ones."""
    return Counter(i for batch in fake.batch.created[first:] for i in batch.custom_ids)


# -- whole runs -----------------------------------------------------------------------------------


def test_batch_run_gives_the_online_rows_at_the_batch_price(tmp_path, fake, make_config):
    fake.prefix_cache = None  # cached tokens would depend on what the fake saw first
    priced = {"model": "gpt-4o", "answer_model": "gpt-4o-mini"}  # in the bundled price table
    online_status = api.generate(make_config(**priced), tmp_path / "online", progress="none")
    online = {row["id"]: row for row in read_rows(tmp_path / "online")}
    fake.reset()

    config = write_config(
        tmp_path / "batch.yaml", make_config(**priced, **{**FAST, "batch": False})
    )
    result = subprocess.run(
        batch_command(tmp_path / "run", config),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "at batch prices" in result.stderr  # the plan line
    rows = read_rows(tmp_path / "run")
    assert len(rows) == 12
    assert {row["id"]: row["messages"] for row in rows} == {
        row_id: row["messages"] for row_id, row in online.items()
    }
    # Subjects and syllabi online, questions and answers in one batch each, one model per batch.
    assert fake.request_count == 2 * 2 * 2 + 4 * 2
    sent = [i for b in fake.batch.created for i in b.custom_ids]
    assert len(sent) == len(set(sent)) == 24
    for batch, upload in zip(fake.batch.created, fake.batch.uploads, strict=True):
        assert batch.endpoint == "/v1/chat/completions" and batch.auth == "bearer"
        assert {line["url"] for line in upload.lines} == {"/v1/chat/completions"}
        assert len({line["body"]["model"] for line in upload.lines}) == 1
    assert calls_by_stage(tmp_path / "run") == {
        ("subjects", 0): 8,
        ("syllabus", 0): 8,
        ("question", 1): 12,
        ("answer", 1): 12,
    }
    # The same replies, so the same tokens: questions and answers at half the online price.
    spent = api.status(tmp_path / "run").stages
    for stage, share in (("subjects", 1.0), ("syllabus", 1.0), ("question", 0.5), ("answer", 0.5)):
        assert spent[stage].cost == pytest.approx(online_status.stages[stage].cost * share)
        assert spent[stage].cost > 0


def test_killed_run_polls_the_same_batch_and_pays_nothing_twice(tmp_path, fake, make_config):
    fake.batch.delay = 3.0  # the first batch is still running when the process dies
    config = write_config(tmp_path / "batch.yaml", make_config(**FAST))
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        batch_command(run_dir, config),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not fake.batch.created and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)  # it polls the batch at least once
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = fake.batch.created
    assert len(first) == 1, "the kill should land while the question batch runs"
    assert fake.batch.status(first[0].batch_id) in ("validating", "in_progress")
    paid = set(first[0].custom_ids)
    uploads, polls = len(fake.batch.uploads), fake.batch.polls(first[0].batch_id)

    fake.batch.delay = 0.1
    result = subprocess.run(
        batch_command(run_dir, config),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert fake.batch.polls(first[0].batch_id) > polls, "the same batch is polled again"
    assert not paid & set(ids_after(fake, 1)), "a request of the running batch was sent again"
    assert not paid & {i for u in fake.batch.uploads[uploads:] for i in u.custom_ids}
    rows = read_rows(run_dir)
    assert len(rows) == 12 and len({row["id"] for row in rows}) == 12
    assert calls_by_stage(run_dir)[("question", 1)] == 12


def test_partial_failure_resubmits_only_the_failed_lines(tmp_path, fake, make_config):
    fake.batch.fail_next(0.5)  # half the question lines get an HTTP 500 in the error file
    result = api.generate(make_config(**FAST), tmp_path, progress="none")
    assert result.complete and result.rows == 12

    outcomes = fake.batch.outcomes(fake.batch.created[0].batch_id)
    failed = {key for key, outcome in outcomes.items() if outcome == "failed"}
    assert 0 < len(failed) < 12
    again = ids_after(fake, 1)
    assert all(again[key] == 1 for key in failed), "each failed line is sent once more"
    assert not (set(outcomes) - failed) & set(again), "a line with output was sent again"
    assert len(read_rows(tmp_path)) == 12


def test_expiry_resubmits_only_the_unfinished_lines(tmp_path, fake, make_config):
    fake.batch.expire_next(after_lines=5)
    result = api.generate(make_config(**FAST), tmp_path, progress="none")
    assert result.complete and result.rows == 12

    first = fake.batch.created[0].batch_id
    assert fake.batch.status(first) == "expired"
    outcomes = fake.batch.outcomes(first)
    unfinished = {key for key, outcome in outcomes.items() if outcome == "unfinished"}
    assert len(outcomes) > 5 and len(unfinished) == len(outcomes) - 5
    again = ids_after(fake, 1)
    assert all(again[key] == 1 for key in unfinished)
    assert not (set(outcomes) - unfinished) & set(again)
    assert calls_by_stage(tmp_path)[("question", 1)] == 12


def test_a_rejected_line_fails_its_item_and_the_next_run_retries_it(tmp_path, fake, make_config):
    fake.batch.fail_next(1.0, status=400)
    result = api.generate(make_config(**FAST), tmp_path, progress="none")
    assert result.failed == 12 and result.rows == 0
    assert "HTTP 400" in result.errors[0][2]
    assert len(fake.batch.created) == 1  # a 400 is not worth another batch

    result = api.generate(make_config(**FAST), tmp_path, progress="none")
    assert result.complete and result.rows == 12


def test_a_provider_without_batch_api_is_one_clear_line(tmp_path, fake, make_config):
    fake.batch.enabled = False
    config = write_config(tmp_path / "batch.yaml", make_config(**FAST))
    result = subprocess.run(
        batch_command(tmp_path / "run", config),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no batch API" in result.stderr and "drop --batch" in result.stderr
    assert fake.request_count == 0, "it stops before paying for anything online"


# -- the client on its own ------------------------------------------------------------------------


def chat_requests(count: int, model: str = "m", words: int = 1) -> list[ChatRequest]:
    return [
        ChatRequest(model=model, messages=({"role": "user", "content": f"q{i} " * words},))
        for i in range(count)
    ]


def client_for(fake: FakeTeacher, store: Store, **options: Any) -> BatchClient:
    values: dict[str, Any] = {"poll_interval": 0.02, "flush_after": 0.05}
    values.update(options)
    return BatchClient(fake.base_url, API_KEY, SqliteBatchRecords(store), **values)


async def test_batches_are_split_by_requests_bytes_and_model(tmp_path, fake):
    store = Store.open(tmp_path)
    async with client_for(fake, store, max_requests=4) as client:
        replies = await asyncio.gather(*(client.complete(r) for r in chat_requests(10)))
    assert all(reply.batch and reply.text for reply in replies)
    assert sorted(len(b.custom_ids) for b in fake.batch.created) == [2, 4, 4]

    fake.reset()
    line = len(orjson.dumps(chat_requests(1, words=100)[0].body())) + 200
    async with client_for(fake, store, max_bytes=3 * line) as client:
        both = chat_requests(6, "a", words=100) + chat_requests(2, "b", words=100)
        await asyncio.gather(*(client.complete(r) for r in both))
    sizes = sorted(len(b.custom_ids) for b in fake.batch.created)
    assert sizes == [2, 3, 3], "at most 3 lines of ~line bytes per file, one model per batch"
    store.close()


async def test_openai_and_azure_request_shapes(tmp_path, fake):
    store = Store.open(tmp_path)
    azure_url = fake.base_url.removesuffix("/v1") + "/openai"
    async with BatchClient(
        azure_url,
        API_KEY,
        SqliteBatchRecords(store),
        azure=True,
        api_version="2024-10-21",
        poll_interval=0.02,
        flush_after=0.05,
    ) as client:
        replies = await asyncio.gather(*(client.complete(r) for r in chat_requests(3, "my-dep")))
    assert all(reply.batch for reply in replies)
    (upload,) = fake.batch.uploads
    (batch,) = fake.batch.created
    assert (upload.azure, upload.auth, upload.api_version) == (True, "api-key", "2024-10-21")
    assert (batch.azure, batch.auth, batch.endpoint) == (True, "api-key", "/chat/completions")
    assert {line["url"] for line in upload.lines} == {"/chat/completions"}
    assert {line["body"]["model"] for line in upload.lines} == {"my-dep"}

    fake.reset()
    async with client_for(fake, store) as client:
        await asyncio.gather(*(client.complete(r) for r in chat_requests(3, "other")))
    (upload,) = fake.batch.uploads
    (batch,) = fake.batch.created
    assert (upload.azure, upload.auth, upload.api_version) == (False, "bearer", None)
    assert batch.endpoint == "/v1/chat/completions"
    assert {line["url"] for line in upload.lines} == {"/v1/chat/completions"}
    store.close()


def test_azure_is_recognised_by_its_host():
    assert azure_options("https://api.openai.com/v1") == (False, None)
    assert azure_options("http://localhost:8000/v1") == (False, None)
    assert azure_options("https://res.openai.azure.com/openai/v1") == (True, None)
    assert azure_options("https://res.openai.azure.com/openai") == (True, "2024-10-21")


async def test_resubmissions_are_bounded(tmp_path, fake):
    store = Store.open(tmp_path)
    fake.batch.reject_next("no quota left")
    fake.batch.reject_next("no quota left")
    async with client_for(fake, store, max_resubmits=1) as client:
        with pytest.raises(RequestFailed, match=r"no reply after 2 batches.*no quota left"):
            await client.complete(chat_requests(1)[0])
    assert len(fake.batch.created) == 2
    store.close()


async def _upload(fake: FakeTeacher, requests: list[ChatRequest]) -> str:
    content = b"".join(
        orjson.dumps(
            {"custom_id": r.key, "method": "POST", "url": "/v1/chat/completions", "body": r.body()}
        )
        + b"\n"
        for r in requests
    )
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="x.jsonl")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/files", data=form, headers=headers) as response,
    ):
        return (await response.json())["id"]


async def _create(fake: FakeTeacher, file_id: str) -> str:
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/batches", json=body, headers=headers) as response,
    ):
        return (await response.json())["id"]


def _left_by_a_killed_run(store: Store, requests: list[ChatRequest], file_id: str) -> None:
    """The rows a run killed between uploading a file and recording its batch leaves behind."""
    store.migrate("batches", MIGRATIONS)
    with store.db:
        cursor = store.db.execute(
            "INSERT INTO batches (model, status, input_file_id, requests, created_at, updated_at)"
            " VALUES ('m', 'uploaded', ?, ?, 0, 0)",
            (file_id, len(requests)),
        )
        store.db.executemany(
            "INSERT INTO batch_requests (key, batch) VALUES (?, ?)",
            [(r.key, cursor.lastrowid) for r in requests],
        )


@pytest.mark.parametrize("created", [True, False], ids=["created", "never-created"])
async def test_kill_between_upload_and_record(tmp_path, fake, created):
    store = Store.open(tmp_path)
    requests = chat_requests(3)
    file_id = await _upload(fake, requests)
    batch_id = await _create(fake, file_id) if created else None
    _left_by_a_killed_run(store, requests, file_id)

    async with client_for(fake, store) as client:
        replies = await asyncio.gather(*(client.complete(r) for r in requests))
    assert all(reply.batch for reply in replies)
    if created:  # found by its input file in the batch list, and collected
        assert [b.batch_id for b in fake.batch.created] == [batch_id]
        assert len(fake.batch.uploads) == 1
    else:  # nothing was paid for: sent anew
        assert len(fake.batch.created) == 1 and len(fake.batch.uploads) == 2
    store.close()


async def test_results_nobody_waits_for_yet_are_kept(tmp_path, fake):
    """A batch collected while the engine has not reached some of its items: those results are
    committed, and handed out later without another batch."""
    store = Store.open(tmp_path)
    requests = chat_requests(4)
    async with client_for(fake, store) as client:
        first = await asyncio.gather(*(client.complete(r) for r in requests))
    before = len(fake.batch.created)
    async with client_for(fake, store) as client:
        again = await asyncio.gather(*(client.complete(r) for r in requests))
    assert [r.text for r in again] == [r.text for r in first]
    assert len(fake.batch.created) == before == 1
    store.close()
