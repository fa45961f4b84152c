"""Status and export of a Ray run directory, without Ray: a real local run is converted into the
Ray layout (questions and answers moved from glan.db to Parquet parts), and what glan reads of it
must match what it reads of the local run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import read_rows
from glan import api
from glan.costs.prices import Price, PriceTable
from glan.ids import stable_id
from glan.items import NewItem
from glan.publish.export import MANIFEST, export
from glan.run import ENGINE_META, open_run
from glan.run.curation import CuratedRows, CurationLog
from glan.run.jsonl import OUTPUT_NAME
from glan.run.parts import (
    CALLS,
    FAILED,
    ROWS,
    PartWriter,
    RunLocation,
    call_schema,
    failure_schema,
    node_key,
    row_schema,
)
from glan.run.ray_parts import (
    Failure,
    done_keys,
    failures,
    finished_keys,
    keys_of,
    stored_replies,
    wide_usage,
)
from glan.run.store import Store

WIDE = ("question", "answer")
PRICES = PriceTable(
    models={
        "teacher-big": Price(input=3, cached_input=0.3, output=15),
        "teacher-small": Price(input=1, output=2),
    }
)


@pytest.fixture
def local_run(tmp_path: Path, make_config: Any) -> Path:
    """A finished local run: 2 disciplines x 2 subjects x 3 questions = 12 pairs."""
    run = tmp_path / "local"
    api.generate(make_config(), run, progress="none")
    return run


def to_ray(local: Path, out: Path, leave_out: int = 0) -> list[dict[str, Any]]:
    """Copy ``local`` into ``out`` in the layout of a Ray run: its rows (less the last
    ``leave_out``) in two rows/ parts, the first row written twice; its question and answer calls
    in two calls/ parts; glan.db with the narrow stages only. Returns every row of the local run,
    in output order."""
    shutil.copytree(local, out)
    (out / OUTPUT_NAME).unlink()
    location = RunLocation.of(str(out))
    store = Store.open(out)
    try:
        rows = [row for _, row in store.outputs()]
        kept = rows[: len(rows) - leave_out]
        half = len(kept) // 2
        # one writer: its parts are named in the order they are flushed
        write_parts(location, ROWS, row_schema(), [kept[:half], [*kept[half:], kept[0]]])
        cursor = store.db.execute(
            "SELECT key, node_id, stage, model, request, text, finish_reason, prompt_tokens,"
            " completion_tokens, latency, batch, created_at, cached_tokens FROM calls"
            " WHERE stage IN (?, ?)",
            WIDE,
        )
        names = [column[0] for column in cursor.description]
        calls = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        for call in calls:
            call["batch"] = bool(call["batch"])
        write_parts(location, CALLS, call_schema(), [calls[::2], calls[1::2]])
        store.db.execute("DELETE FROM nodes WHERE kind IN (?, ?)", WIDE)
        store.db.execute("DELETE FROM calls WHERE stage IN (?, ?)", WIDE)
        store.set_meta("engine", "ray")
    finally:
        store.close()
    return rows


def write_parts(
    location: RunLocation, directory: str, schema: pa.Schema, parts: list[list[dict[str, Any]]]
) -> list[str]:
    writer = PartWriter(location, directory, schema)
    for part in parts:
        for record in part:
            writer.add(record)
        writer.flush()
    return location.parts(directory)


def failure(node_id: str, kind: str, error: str, at: float) -> dict[str, Any]:
    return {"id": node_id, "kind": kind, "root": "root-id", "error": error, "failed_at": at}


# -- status -------------------------------------------------------------------------------------


def test_status_of_a_ray_run_is_that_of_the_local_run(tmp_path, local_run):
    ray = tmp_path / "ray"
    rows = to_ray(local_run, ray)
    store = Store.open(ray)
    try:
        assert store.get_meta(ENGINE_META) == "ray" and not store.counts().keys() & set(WIDE)
    finally:
        store.close()

    want = api.status(local_run, prices=PRICES)
    got = api.status(ray, prices=PRICES)
    assert got.rows == want.rows == len(rows) == 12
    for name in ("question", "answer"):  # not trivially equal: both are priced and done
        assert want.stages[name].cost > 0 and want.stages[name].done == 12
    assert got.stages == want.stages
    assert got.errors == want.errors == []
    assert got.complete

    location = RunLocation.of(str(ray))
    keys = done_keys(location)
    assert keys.dtype == np.uint64
    assert keys.tolist() == sorted(node_key(row["id"]) for row in rows)
    local_store = Store.open(local_run)
    try:
        local_usage = [usage for usage in local_store.usage() if usage[0] in WIDE]
    finally:
        local_store.close()
    assert sorted(wide_usage(location)) == sorted(local_usage)
    assert any(usage[6] for usage in local_usage)  # the fake teacher reports cached tokens


def test_calls_parts_of_an_older_glan_read_as_nothing_cached(tmp_path, local_run):
    """Parts written before calls/ had a cached_tokens column still count, as 0 cached."""
    ray = tmp_path / "ray"
    to_ray(local_run, ray)
    location = RunLocation.of(str(ray))
    for path in location.parts(CALLS):  # rewrite each part without the column
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["cached_tokens"]), path)
    assert "cached_tokens" not in pq.read_schema(location.parts(CALLS)[0]).names
    usage = wide_usage(location)
    assert usage and all(entry[6] == 0 for entry in usage)
    assert sum(entry[3] for entry in usage) == 24  # 12 questions, 12 answers
    replies = stored_replies(location, np.empty(0, dtype=np.uint64))
    assert len(replies) == 24 and {r.cached_tokens for r in replies.values()} == {0}


def test_keys_of_agrees_with_node_key():
    ids = [stable_id("x", i) for i in range(50)] + ["ffffffffffffffff0000", "0" * 20]
    array = pa.array(ids)
    assert keys_of(array).tolist() == [node_key(i) for i in ids]
    assert keys_of(array.slice(7, 20)).tolist() == [node_key(i) for i in ids[7:27]]
    assert keys_of(pa.array([], pa.string())).tolist() == []


def test_failures_count_until_a_row_supersedes_them(tmp_path, local_run):
    ray = tmp_path / "ray"
    rows = to_ray(local_run, ray, leave_out=3)
    kept, (lost_question, lost_answer, pending) = rows[:-3], rows[-3:]
    question_id = lost_question["meta"]["question_id"]
    assert stable_id(question_id, "answer") == lost_question["id"]  # what failures() relies on
    location = RunLocation.of(str(ray))
    parts = [  # the latest failure of question_id is read first
        [
            failure(question_id, "question", "q boom 2", 200.0),
            failure(lost_answer["meta"]["question_id"], "question", "ran later", 50.0),
            failure(lost_answer["id"], "answer", "a boom", 150.0),
        ],
        [
            failure(question_id, "question", "q boom 1", 100.0),
            failure(kept[0]["id"], "answer", "made in a later run", 300.0),
            failure(kept[1]["meta"]["question_id"], "question", "made in a later run", 400.0),
        ],
    ]
    write_parts(location, FAILED, failure_schema(), parts)
    store = Store.open(ray)  # and a narrow-stage failure, between the two wide ones
    try:
        store.db.execute(
            "UPDATE nodes SET status = 'failed', error = 's boom', updated_at = 175"
            " WHERE id = (SELECT id FROM nodes WHERE kind = 'subject_query' LIMIT 1)"
        )
        query_id = store.db.execute("SELECT id FROM nodes WHERE status = 'failed'").fetchone()[0]
    finally:
        store.close()

    failed = failures(location, done_keys(location))
    assert failed == {
        question_id: Failure(question_id, "question", "root-id", "q boom 2", 2, 200.0),
        lost_answer["id"]: Failure(lost_answer["id"], "answer", "root-id", "a boom", 1, 150.0),
    }
    status = api.status(ray)
    assert status.rows == 9
    counts = {name: (s.done, s.pending, s.failed) for name, s in status.stages.items()}
    # 12 expected; the pending question is the third left-out row's, which has no record at all
    assert counts["question"] == (10, 1, 1)
    assert counts["answer"] == (9, 1, 1)
    assert status.errors == [
        ("question", question_id, "q boom 2"),
        ("subject_query", query_id, "s boom"),
        ("answer", lost_answer["id"], "a boom"),
    ]
    assert not status.complete and status.failed == 3
    assert pending["id"] not in {row["id"] for row in rows_of(ray)}


def test_a_broken_part_is_skipped_and_set_aside_only_by_the_engine(tmp_path, local_run):
    ray = tmp_path / "ray"
    rows = to_ray(local_run, ray, leave_out=1)
    location = RunLocation.of(str(ray))
    before = set(location.parts(ROWS))
    writer = PartWriter(location, ROWS, row_schema())
    writer.add(rows[-1])
    writer.flush()
    (broken,) = set(location.parts(ROWS)) - before
    data = Path(broken).read_bytes()
    Path(broken).write_bytes(data[: len(data) // 2])  # cut short, as by a killed job

    result = export(ray, out=tmp_path / "export")
    assert result.rows == 11
    assert api.status(ray).rows == 11
    assert Path(broken).exists()  # readers leave it: a running job may still be writing it

    finished_keys(location)  # the engine, starting, owns the directory
    assert not Path(broken).exists() and Path(broken + ".broken").exists()
    assert api.status(ray).rows == 11


# -- export -------------------------------------------------------------------------------------


def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    run = open_run(run_dir)
    try:
        return list(CuratedRows(run))
    finally:
        run.close()


def test_parquet_rows_are_the_local_rows_each_once(tmp_path, local_run):
    ray = tmp_path / "ray"
    to_ray(local_run, ray)
    run = open_run(ray)
    try:
        rows = CuratedRows(run)
        assert (rows.curation, rows.removed, rows.uncurated) == (None, 0, 0)
        local = read_rows(local_run)
        assert list(rows) == local  # the row written twice comes once, in place
        assert list(rows) == local  # and a second pass reads the same
        assert [seq for seq, _ in run.rows()] == list(range(1, 13))
    finally:
        run.close()
    assert rows_of(ray) == local  # and so does the next reader, from the index


@pytest.mark.parametrize("to", ["jsonl", "parquet"])
def test_export_of_a_ray_run_is_that_of_the_local_run(tmp_path, local_run, to):
    ray = tmp_path / "ray"
    to_ray(local_run, ray)
    options: dict[str, Any] = {"format": "messages", "to": to, "test_per_discipline": 2, "seed": 3}
    want = export(local_run, out=tmp_path / "want", **options)
    got = export(ray, out=tmp_path / "got", **options)
    assert got.splits == want.splits == {"train": 8, "test": 4}
    assert got.files == want.files
    assert (got.curation, got.removed, got.uncurated) == (None, 0, 0)
    for name in want.files:
        if to == "jsonl":
            assert (tmp_path / "got" / name).read_bytes() == (tmp_path / "want" / name).read_bytes()
        else:
            assert pq.read_table(tmp_path / "got" / name).equals(
                pq.read_table(tmp_path / "want" / name)
            )
    assert MANIFEST not in want.files


# -- the commands -------------------------------------------------------------------------------


def test_curate_report_and_export_of_a_ray_run_are_those_of_the_local_run(tmp_path, local_run, cli):
    """The commands a user runs after generating at scale read a Ray run as they read a local
    one: the same removals, the same report figures, the same exported rows."""
    ray = tmp_path / "ray"
    to_ray(local_run, ray)
    # a copy of a kept question and a refusal give curation something to remove
    seeded = [*read_rows(local_run)[:2]]
    seeded[0] = {**seeded[0], "id": "f" * 64}
    seeded[1] = {
        **seeded[1],
        "id": "e" * 64,
        "messages": [
            seeded[1]["messages"][0],
            {"role": "assistant", "content": "I am sorry, but I cannot help with that request."},
        ],
    }
    for where in (local_run, ray):
        add_rows(where, seeded)
    for where in (local_run, ray):
        result = cli("curate", str(where), "--language", "any")
        assert result.returncode == 0, result.stderr
    want, got = (curated(where) for where in (local_run, ray))
    assert got == want and want["counts"] == {"refusal": 1, "exact_duplicate": 1}
    assert want["removed"] == [("e" * 64, "refusal"), ("f" * 64, "exact_duplicate")]

    for where in (local_run, ray):
        result = cli("report", str(where), "--out", str(tmp_path / f"{where.name}.html"))
        assert result.returncode == 0, result.stderr
    want_page, got_page = (
        figures((tmp_path / f"{w.name}.html").read_text(), w) for w in (local_run, ray)
    )
    assert got_page == want_page and '<div class="value">12</div>' in want_page

    for where in (local_run, ray):
        result = cli("export", str(where), "--out", str(tmp_path / f"export-{where.name}"))
        assert result.returncode == 0, result.stderr
        assert "12 pairs" in result.stdout
    want_rows, got_rows = (
        (tmp_path / f"export-{w.name}" / "train.jsonl").read_text() for w in (local_run, ray)
    )
    assert got_rows == want_rows
    assert cli("status", str(ray)).returncode == 0


def add_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Pairs written after the others: output rows in glan.db, or a new rows/ part."""
    store = Store.open(run_dir)
    try:
        if store.get_meta(ENGINE_META) == "ray":
            write_parts(RunLocation.of(str(run_dir)), ROWS, row_schema(), [rows])
            return
        parent = next(iter(store.nodes("answer")))
        for row in rows:
            store.add_nodes([NewItem(row["id"], "answer", parent.parent_id, parent.root, 99, {})])
            store.finish(store.get(row["id"]), row, output=True)
    finally:
        store.close()


def curated(run_dir: Path) -> dict[str, Any]:
    store = Store.open(run_dir)
    try:
        log = CurationLog(store)
        latest = log.latest()
        assert latest is not None
        removals = log.removals(latest.id)
        return {
            "counts": latest.counts,
            "kept": latest.rows_kept,
            "removed": sorted((r.row_id, r.reason) for r in removals),
            "matched": sorted(str(r.matched) for r in removals),
        }
    finally:
        store.close()


def figures(page: str, run_dir: Path) -> str:
    """The report's text less the plots' scripts and what names the run directory or the time."""
    import re

    body = re.sub(r"<script.*?</script>", "", page, flags=re.S)
    body = body.replace(str(run_dir), "RUN").replace(f"report: {run_dir.name}", "report: RUN")
    return re.sub(r"\d{4}-\d\d-\d\d[ T][\d:]+", "TIME", body)
