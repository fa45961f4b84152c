"""The Ray engine on a real local Ray (2 CPUs) against the fake teacher over HTTP.

Every test here shares one Ray instance (module fixture) and runs on one xdist worker, so the
suite starts Ray once; CLI runs join it with --ray-address, as a driver joins a cluster.
"""

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

from conftest import API_KEY, cli_env, closed_port, read_rows, write_config
from glan import api
from glan.config import ConfigError
from glan.ids import canonical_bytes
from glan.llm.types import unpack_request
from glan.publish.export import export
from glan.run.parts import CALLS, FAILED, ROWS, RunLocation

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.xdist_group("ray")

# One worker per stage unless a test needs more; replies written often, so a kill finds some.
RAY = {"workers": 1, "journal_seconds": 0.2}


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def ray_config(make_config: Any, **overrides: Any) -> Any:
    return make_config(engine="ray", ray={**RAY, **overrides.pop("ray", {})}, **overrides)


def generate_args(settings: Path, out: Path, cluster: str, api_key: str = API_KEY) -> list[str]:
    """``glan generate`` joining the test's Ray cluster, as a driver joins a real one."""
    return [
        "generate", "--config", str(settings), "--out", str(out), "--api-key", api_key,
        "--ray-address", cluster, "--progress", "log",
    ]  # fmt: skip


def start_driver(settings: Path, out: Path, cluster: str, **popen: Any) -> subprocess.Popen[str]:
    """``glan generate`` in its own process, stderr kept for the test to read."""
    return subprocess.Popen(
        [sys.executable, "-m", "glan", *generate_args(settings, out, cluster)],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def parquet_rows(run: Path) -> list[dict[str, Any]]:
    return parquet_rows_at(str(run))


def parquet_rows_at(run: str) -> list[dict[str, Any]]:
    return [row for batch in RunLocation.of(run).read(ROWS) for row in batch.to_pylist()]


def test_ray_and_local_engines_make_the_same_rows(cluster, tmp_path, teacher, make_config):
    on_ray = api.generate(ray_config(make_config), tmp_path / "ray", progress="none")
    sent = teacher.request_count
    local = api.generate(make_config(), tmp_path / "local", progress="none")

    ray_rows = {row["id"]: row for row in parquet_rows(tmp_path / "ray")}
    local_rows = {row["id"]: row for row in read_rows(tmp_path / "local")}
    assert len(ray_rows) == len(local_rows) == 12
    assert ray_rows == local_rows  # same ids, and with a deterministic teacher the same rows
    assert teacher.request_count == 2 * sent  # neither engine asked anything twice

    assert on_ray.complete and on_ray.rows == local.rows == 12
    for name, stage in on_ray.stages.items():
        theirs = local.stages[name]
        assert (stage.done, stage.requests, stage.tokens_in) == (
            theirs.done,
            theirs.requests,
            theirs.tokens_in,
        ), name

    # Done is done: a second run asks nothing and writes nothing new.
    again = api.generate(ray_config(make_config), tmp_path / "ray", progress="none")
    assert teacher.request_count == 2 * sent
    assert again.rows == 12 and len(parquet_rows(tmp_path / "ray")) == 12

    exported = export(tmp_path / "ray", out=tmp_path / "export")
    lines = (tmp_path / "export" / "train.jsonl").read_text().splitlines()
    assert exported.rows == 12 and {json.loads(line)["id"] for line in lines} == set(local_rows)


def test_a_row_that_keeps_failing_is_recorded_and_retried(cluster, tmp_path, teacher, make_config):
    teacher.always_fail("a course in Chemistry", fault="500")
    result = api.generate(ray_config(make_config, max_retries=1), tmp_path, progress="none")
    rows = parquet_rows(tmp_path)
    assert {row["meta"]["discipline"] for row in rows} == {"Mathematics"}
    assert len(rows) == 6
    assert result.stages["question"].failed == 6 and not result.complete
    assert any("HTTP 500" in error for _, _, error in result.errors)
    failed = [r for b in RunLocation.of(str(tmp_path)).read(FAILED) for r in b.to_pylist()]
    assert len(failed) == 6 and {r["kind"] for r in failed} == {"question"}

    teacher.reset()
    result = api.generate(ray_config(make_config), tmp_path, progress="none")
    assert result.complete and result.stages["question"].failed == 0
    rows = parquet_rows(tmp_path)
    assert len(rows) == 12 and len({row["id"] for row in rows}) == 12
    # Only the failed questions and their answers were asked again.
    assert teacher.request_count == 12


def test_workers_share_one_rate_limit(cluster, tmp_path, teacher, make_config):
    """Two question and two answer workers on one model: together they keep to its RPM."""
    rpm = 240  # 4 a second; a bucket holds one second of it
    config = ray_config(
        make_config,
        questions_per_syllabus=6,
        rate_limits={"teacher-small": {"rpm": rpm}},
        stages={"question": {"model": "teacher-small"}},
        ray={"workers": 2},
    )
    api.generate(config, tmp_path, progress="none")
    times = sorted(t for t, body in teacher.arrivals if body["model"] == "teacher-small")
    assert len(times) == 48
    window = 2.0
    most = max(sum(1 for t in times if start <= t < start + window) for start in times)
    # burst (4) + 2 s at 4/s (8) + one for timing at the edges; each worker on its own would
    # allow four times as many.
    assert most <= 4 + window * rpm / 60 + 1, most
    assert times[-1] - times[0] >= (len(times) - 4) / (rpm / 60) * 0.95


def _journaled_bodies(run: Path) -> set[bytes]:
    location = RunLocation.of(str(run))
    bodies = set()
    for batch in location.read(CALLS, ["request"]):
        for blob in batch.column("request").to_pylist():
            bodies.add(canonical_bytes(unpack_request(blob)["body"]))
    return bodies


def test_a_killed_job_resends_only_what_had_no_stored_reply(
    cluster, tmp_path, teacher, make_config
):
    config = ray_config(make_config, questions_per_syllabus=8)
    settings = write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    teacher.latency = 0.3
    driver = start_driver(settings, run, cluster, start_new_session=True)
    deadline = time.monotonic() + 90
    location = RunLocation.of(str(run))
    while not (run / CALLS).exists() or len(location.parts(CALLS)) < 2:
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        assert time.monotonic() < deadline, "the job wrote no replies"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    kept = _journaled_bodies(run)
    written = len(parquet_rows(run))
    first = teacher.request_count
    assert kept and written < 32  # killed in the middle of the wide stages

    teacher.latency = 0.0
    result = api.generate(config, run, progress="none")
    assert result.complete
    resent = [canonical_bytes(body) for body in teacher.requests[first:]]
    assert not kept & set(resent), "a stored reply was paid for again"
    rows = parquet_rows(run)
    assert len(rows) == 32 and len({row["id"] for row in rows}) == 32
    assert teacher.request_count < first + 2 * 32  # the journal saved some of the work


def test_a_rejected_key_in_the_workers_stops_the_job_with_one_line(
    cluster, tmp_path, teacher, make_config, cli
):
    # Subjects and syllabi first, so the next run's first requests come from the workers.
    api.generate(ray_config(make_config, questions_per_syllabus=0), tmp_path, progress="none")
    config = ray_config(make_config, questions_per_syllabus=2)
    settings = write_config(tmp_path / "config.yaml", config)
    result = cli(*generate_args(settings, tmp_path, cluster, api_key="sk-wrong"))
    assert result.returncode == 1
    assert "rejected the API key" in result.stderr
    assert "Traceback" not in result.stderr
    status = api.status(tmp_path)
    assert status.stages["syllabus"].done == 4 and status.rows == 0


def test_parquet_parts_hold_the_row_schema(cluster, tmp_path, teacher, make_config):
    api.generate(ray_config(make_config, questions_per_syllabus=1), tmp_path, progress="none")
    from glan.run.parts import row_schema

    for path in RunLocation.of(str(tmp_path)).parts(ROWS):
        assert pq.read_schema(path).remove_metadata().equals(row_schema())


def test_ctrl_c_stops_the_job_and_its_workers(cluster, tmp_path, teacher, make_config):
    config = ray_config(make_config, questions_per_syllabus=30)
    settings = write_config(tmp_path / "config.yaml", config)
    teacher.latency = 0.2
    driver = start_driver(settings, tmp_path, cluster)
    deadline = time.monotonic() + 90
    while teacher.count_matching("teacher-small") < 5:  # answers are under way
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=30)
    assert driver.returncode == 130, stderr
    assert "stopped;" in stderr and "Traceback" not in stderr
    # The job's workers went with their driver: nothing more is asked.
    time.sleep(2)
    settled = teacher.request_count
    time.sleep(1)
    assert teacher.request_count == settled
    assert teacher.request_count < 8 + 2 * 120


@pytest.fixture
def bucket() -> Any:
    """An S3 endpoint on 127.0.0.1 (moto), with a bucket, as a URI pyarrow opens."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    s3 = fs.FileSystem.from_uri(f"s3://key:secret@bucket?{options}&allow_bucket_creation=true")
    s3[0].create_dir("bucket")
    yield lambda path: f"s3://key:secret@bucket/{path}?{options}"
    server.stop()


def test_a_run_in_an_object_store(cluster, tmp_path, teacher, make_config, bucket, monkeypatch):
    run = bucket("runs/big")
    monkeypatch.setenv("GLAN_STATE", str(tmp_path / "driver"))
    result = api.generate(ray_config(make_config), run, progress="none")
    assert result.complete and result.rows == 12
    assert result.dataset == "s3://bucket/runs/big/rows"  # no credentials shown
    sent = teacher.request_count

    # Another machine, with nothing of the run on its disk, reads it all from the bucket.
    monkeypatch.setenv("GLAN_STATE", str(tmp_path / "elsewhere"))
    assert api.status(run).rows == 12
    assert export(run, out=tmp_path / "export").rows == 12
    rows = {row["id"] for row in parquet_rows_at(run)}
    again = api.generate(ray_config(make_config), run, progress="none")
    assert again.rows == 12 and teacher.request_count == sent  # and resumes it for free
    assert {row["id"] for row in parquet_rows_at(run)} == rows


def test_pools_that_cannot_fit_are_refused_not_waited_for(cluster, tmp_path, make_config):
    config = ray_config(make_config, ray={"workers": 4, "worker_cpus": 0.5})
    with pytest.raises(ConfigError, match=r"need 4\.25 CPUs; the Ray cluster has 2"):
        api.generate(config, tmp_path, progress="none")


def test_a_cluster_that_does_not_answer_is_one_line_before_anything_is_spent(
    tmp_path, teacher, make_config
):
    address = f"127.0.0.1:{closed_port()}"
    config = ray_config(make_config, ray={"address": address})
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at {address}"):
        api.generate(config, tmp_path / "run", progress="none")
    assert teacher.request_count == 0


def test_the_workers_keep_to_the_runs_cost_cap(cluster, tmp_path, teacher, make_config):
    """--max-cost on Ray: the driver's meter holds the one budget every worker reserves
    against; the job stops before the cap, leaves the rest pending, and a higher cap resumes."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "models:\n"
        "  teacher-big: {input: 2.0, output: 8.0}\n"
        "  teacher-small: {input: 1.0, output: 2.0}\n",
        encoding="utf-8",
    )
    tight = {  # worst cases near what the fake teacher writes
        "subjects": {"max_tokens": 1500},
        "syllabus": {"max_tokens": 1500},
        "question": {"max_tokens": 400},
        "answer": {"max_tokens": 400},
    }
    sized = {"prices": prices, "stages": tight, "questions_per_syllabus": 5}
    local = api.generate(make_config(**sized), tmp_path / "local", progress="none")
    narrow = local.stages["subjects"].cost + local.stages["syllabus"].cost
    cap = narrow + 0.5 * (local.cost - narrow)
    teacher.reset()

    capped = api.generate(
        ray_config(make_config, **sized, max_cost=cap), tmp_path / "ray", progress="none"
    )
    assert capped.capped and 0 < capped.cost <= cap
    assert capped.failed == 0 and 0 < capped.rows < 20
    # every question asked kept room for its answer: the cap paid for no orphaned question
    assert capped.stages["answer"].done == capped.stages["question"].done == capped.rows
    assert capped.stages["syllabus"].done == 4  # the narrow stages fit: the wide ones were cut

    resumed = api.generate(
        ray_config(make_config, **sized, max_cost=10.0), tmp_path / "ray", progress="none"
    )
    assert resumed.complete and not resumed.capped and resumed.rows == 20
    bodies = [canonical_bytes(body) for body in teacher.requests]
    assert len(bodies) == len(set(bodies))  # nothing was asked twice
