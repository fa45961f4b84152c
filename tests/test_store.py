"""The run store and the JSONL output brought level with it."""

from __future__ import annotations

import json
import sqlite3

import pytest

from glan.items import NewItem
from glan.llm.types import ChatRequest, ChatResponse
from glan.run.jsonl import JsonlOutput
from glan.run.store import DB_NAME, MIGRATIONS, Store, StoreError


def answer(i: int) -> NewItem:
    return NewItem(id=f"a{i}", kind="answer", parent_id="q", root="d", seq=i, data={})


def test_calls_are_cached_by_request(tmp_path):
    store = Store.open(tmp_path)
    ask = ChatRequest(model="m", messages=({"role": "user", "content": "x"},))
    assert store.cached_call(ask.key) is None
    store.save_call(
        ask,
        ChatResponse(text="y", prompt_tokens=3, completion_tokens=4, cached_tokens=2),
        node_id="n",
        stage="answer",
    )
    store.close()
    store = Store.open(tmp_path)
    cached = store.cached_call(ask.key)
    assert cached is not None and cached.text == "y" and cached.cached
    assert cached.cached_tokens == 2
    assert store.usage() == [("answer", "m", False, 1, 3, 4, 2)]
    store.close()


def test_a_store_of_schema_1_gains_the_cached_tokens_column(tmp_path):
    """Runs written before glan counted cached tokens open, keep their calls, and read them as
    0 cached (issue 10, item 4)."""
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO calls (key, node_id, stage, model, request, text, finish_reason,"
        " prompt_tokens, completion_tokens, latency, batch, created_at)"
        " VALUES ('k', 'n', 'answer', 'm', x'00', 'y', 'stop', 3, 4, 0.1, 0, 0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store.open(tmp_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.usage() == [("answer", "m", False, 1, 3, 4, 0)]
    reply = store.cached_call("k")
    assert reply is not None and reply.cached_tokens == 0
    store.close()


def test_nodes_are_inserted_once_and_failed_ones_come_back(tmp_path):
    store = Store.open(tmp_path)
    store.set_roots(["d"])
    assert store.add_nodes([answer(1), answer(2)]) == 2
    assert store.add_nodes([answer(1)]) == 0
    node = store.get("a1")
    store.fail(node, "boom")
    assert store.counts() == {"answer": {"failed": 1, "pending": 1}}
    assert store.retry_failed() == 1
    assert [n.id for _, n in store.pending("answer", 0, 10)] == ["a1", "a2"]
    store.set_roots(["another discipline"])  # work of unselected disciplines waits
    assert store.pending("answer", 0, 10) == []
    assert store.counts(active_only=True) == {}
    assert store.counts() == {"answer": {"pending": 2}}
    store.close()


def test_a_newer_schema_is_refused(tmp_path):
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "glan.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer glan"):
        Store.open(tmp_path)


def finished_store(tmp_path, n: int) -> Store:
    store = Store.open(tmp_path)
    for i in range(n):
        store.add_nodes([answer(i)])
        store.finish(store.get(f"a{i}"), {"id": f"a{i}", "n": i}, output=True)
    store.commit()
    return store


def test_output_drops_a_cut_line_and_appends_what_is_missing(tmp_path):
    store = finished_store(tmp_path, 5)
    path = tmp_path / "instructions.jsonl"
    path.write_text(json.dumps({"id": "a0", "n": 0}) + "\n" + '{"id": "a1", "n"', encoding="utf-8")
    output = JsonlOutput(path)
    assert output.open(store) == 4
    output.close()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]
    # level already: nothing to add, nothing duplicated
    output = JsonlOutput(path)
    assert output.open(store) == 0
    output.close()
    assert len(path.read_text().splitlines()) == 5
    store.close()


def test_output_that_is_not_ours_is_rewritten(tmp_path):
    store = finished_store(tmp_path, 3)
    path = tmp_path / "instructions.jsonl"
    path.write_text('{"id": "someone else"}\n', encoding="utf-8")
    output = JsonlOutput(path)
    output.open(store)
    output.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a0", "a1", "a2"]
    store.close()


def test_components_migrate_their_own_tables(tmp_path):
    steps = [
        "-- a comment; with a semicolon\nCREATE TABLE extra (a INTEGER);",
        "ALTER TABLE extra ADD COLUMN b TEXT DEFAULT 'x;y'",
    ]
    store = Store.open(tmp_path)
    store.migrate("extra", steps[:1])
    store.migrate("extra", steps)
    store.migrate("extra", steps)  # idempotent
    store.db.execute("INSERT INTO extra (a, b) VALUES (1, 'x')")
    with pytest.raises(StoreError, match="newer than this glan"):
        store.migrate("extra", steps[:1])
    store.close()
