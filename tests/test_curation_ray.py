"""``glan curate --engine ray`` on a real local Ray (2 CPUs): the same removals, reasons and what
they matched as the local curate, for a Ray run (Parquet parts) and for a local run.

Every test here shares one Ray instance (module fixture) and runs on one xdist worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import closed_port, run_cli
from glan.curation import CurateConfig, curate
from glan.run import open_run
from glan.run.store import Store
from test_curation import make_run, removed
from test_curation_equivalence import planted_rows
from test_ray_run_files import to_ray

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A local run of awkward pairs with planted copies, and a benchmark that some leak."""
    where = tmp_path_factory.mktemp("planted")
    rows = planted_rows(300)
    benchmark = where / "bench.jsonl"
    items = [row["messages"][0]["content"] for row in rows[::37]]
    benchmark.write_text("".join(json.dumps({"question": q[:200]}) + "\n" for q in items))
    return make_run(where / "local", rows), benchmark


def test_curating_a_ray_run_on_ray_equals_the_local_curate(cluster, planted, tmp_path):
    local, benchmark = planted
    run = tmp_path / "ray"
    to_ray(local, run)  # two Parquet parts, the first row written twice
    config = CurateConfig(benchmarks=[str(benchmark)], workers=2)
    here = curate(run, config)
    expected = removed(run)
    on_ray = curate(run, config.model_copy(update={"engine": "ray"}))
    assert removed(run) == expected
    assert (on_ray.rows_in, on_ray.rows_kept, on_ray.counts) == (
        here.rows_in,
        here.rows_kept,
        here.counts,
    )
    assert on_ray.notes == here.notes
    reasons = set(here.counts)
    assert {"decontaminated", "exact_duplicate", "near_duplicate", "refusal"} <= reasons
    assert {"answer_leak", "wrong_language", "too_short", "truncated"} <= reasons
    run_of = open_run(run)
    try:
        assert here.rows_in == run_of.last_seq()
    finally:
        run_of.close()


def test_curating_a_local_run_on_ray_equals_the_local_curate(cluster, planted, tmp_path):
    local, _ = planted
    run = tmp_path / "local"
    shutil.copytree(local, run)
    here = curate(run, CurateConfig(near_dup_threshold=0.7))
    expected = removed(run)
    on_ray = curate(run, CurateConfig(near_dup_threshold=0.7, engine="ray"))
    assert removed(run) == expected
    assert (on_ray.rows_in, on_ray.counts) == (here.rows_in, here.counts)
    assert on_ray.notes["lsh"] == here.notes["lsh"]


def test_curating_on_ray_without_dedup_or_near_dup(cluster, planted, tmp_path):
    local, _ = planted
    run = tmp_path / "ray"
    to_ray(local, run)
    for settings in ({"near_dup": False}, {"dedup": False}):
        here = curate(run, CurateConfig(**settings))
        expected = removed(run)
        on_ray = curate(run, CurateConfig(engine="ray", **settings))
        assert removed(run) == expected and on_ray.counts == here.counts


def test_the_reviews_thresholds_apply_on_ray_as_here(cluster, planted, tmp_path, monkeypatch):
    from glan.curation import runner
    from glan.stages.review import Review

    local, _ = planted
    run = tmp_path / "ray"
    rows = to_ray(local, run)
    # every fifth pair judged, some below the threshold (among them duplicates' originals)
    judged = {row["id"]: Review(score=3 + i % 7, reason=f"r{i}") for i, row in enumerate(rows[::5])}
    monkeypatch.setattr(runner, "_reviews", lambda run, config: judged)
    here = curate(run, CurateConfig(min_score=6))
    expected = removed(run)
    on_ray = curate(run, CurateConfig(min_score=6, engine="ray"))
    assert removed(run) == expected
    assert on_ray.counts == here.counts and here.counts["low_score"] > 0


def test_a_run_generated_on_a_cluster_is_curated_on_it_by_default(cluster, planted, tmp_path):
    local, _ = planted
    run = tmp_path / "ray"
    to_ray(local, run)
    here = curate(run)  # made on one machine (no cluster address): this machine's processes
    expected = removed(run)
    assert here.config["engine"] == "local"
    store = Store.open(run)
    try:
        store.log_invocation({"engine": "ray", "ray": {"address": cluster}})
    finally:
        store.close()
    there = curate(run)
    assert (there.config["engine"], there.config["ray_address"]) == ("ray", cluster)
    assert removed(run) == expected and there.counts == here.counts


def test_a_cluster_it_cannot_join_is_one_line_and_changes_nothing(planted, tmp_path):
    local, _ = planted
    run = tmp_path / "local"
    shutil.copytree(local, run)
    curate(run, CurateConfig(engine="local"))
    before = removed(run)
    address = f"127.0.0.1:{closed_port()}"
    result = run_cli("curate", str(run), "--engine", "ray", "--ray-address", address, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot reach the Ray cluster at {address}" in result.stderr
    assert "--engine local" in result.stderr
    assert removed(run) == before  # the curation in force is still the one before
