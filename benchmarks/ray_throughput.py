"""The Ray engine's request rate next to the local engine's, on one machine.

    python benchmarks/ray_throughput.py --latency 0.5 --concurrency 256 --pairs 4000
    python benchmarks/ray_throughput.py --latency 0.2 --concurrency 64 --pairs 400

Runs the same `glan` pipeline (1 discipline, 4 subjects) against the fake teacher in another
process, first with the local engine, then with the Ray engine (--workers actors per wide stage,
each with its share of --concurrency), each into a fresh directory. Requests/s over the question
and answer stages come from the call log: glan.db for the local engine, the calls/ Parquet parts
for the Ray engine. Wall is the whole run, subjects and syllabi included; Ray itself is started
once beforehand (2 CPUs), so its startup is not counted. Ideal = concurrency / latency.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from _fake_server import fake_teacher

from glan import api
from glan.config import GenerateConfig, RayOptions
from glan.run.parts import CALLS, RunLocation

SUBJECTS = 4
WIDE = ("question", "answer")
ENGINES = ("local", "ray")
# 2 CPUs: two pools of --workers actors at a quarter CPU each leave room for Ray Data's tasks.
WORKER_CPUS = 0.25


def config_for(base_url: str, engine: str, args: argparse.Namespace) -> GenerateConfig:
    ray_options: dict[str, Any] = {
        "workers": args.workers,
        "worker_cpus": WORKER_CPUS,
        "journal_seconds": args.journal_seconds,
    }
    return GenerateConfig(
        base_url=base_url,
        api_key="bench",
        disciplines=["Mathematics"],
        subject_queries=2,
        max_subjects_per_discipline=SUBJECTS,
        questions_per_syllabus=args.pairs // SUBJECTS,
        concurrency=args.concurrency,
        engine=engine,
        ray=ray_options,
    )


def local_calls(run_dir: Path) -> tuple[int, float]:
    """Wide-stage calls and the seconds from the first to the last, from glan.db."""
    db = sqlite3.connect(run_dir / "glan.db")
    try:
        count, first, last = db.execute(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM calls"
            " WHERE stage IN ('question', 'answer')"
        ).fetchone()
    finally:
        db.close()
    return count, last - first


def ray_calls(run_dir: Path) -> tuple[int, float]:
    """Wide-stage calls and the seconds from the first to the last, from the calls/ parts."""
    batches = list(RunLocation.of(str(run_dir)).read(CALLS, ["stage", "created_at"]))
    table = pa.Table.from_batches(batches)
    table = table.filter(pc.is_in(table.column("stage"), pa.array(WIDE)))
    bounds = pc.min_max(table.column("created_at")).as_py()
    return table.num_rows, bounds["max"] - bounds["min"]


def run_once(base_url: str, engine: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"glan-{engine}-") as tmp:
        run_dir = Path(tmp)
        config = config_for(base_url, engine, args)
        started = time.perf_counter()
        result = api.generate(config, run_dir, progress="none")
        wall = time.perf_counter() - started
        assert result.rows == args.pairs, (engine, result)
        count, span = (local_calls if engine == "local" else ray_calls)(run_dir)
    return {"wall": wall, "calls": count, "span": span, "rate": count / span}


def print_table(title: str, results: dict[str, dict[str, float]], ideal: float | None) -> None:
    print(title)
    print("  engine   wall s wide calls   wide s    req/s   ideal")
    for engine, result in results.items():
        share = f"{result['rate'] / ideal:7.1%}" if ideal else f"{'-':>7}"
        print(
            f"  {engine:<6} {result['wall']:8.1f} {result['calls']:10.0f}"
            f" {result['span']:8.1f} {result['rate']:8.0f} {share}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=256,
        help="in flight in all; Ray splits it over the workers of both stages",
    )
    parser.add_argument("--workers", type=int, default=2, help="Ray actors per wide stage")
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; medians are shown")
    parser.add_argument(
        "--journal-seconds",
        type=float,
        default=RayOptions().journal_seconds,
        help="how often Ray workers write their replies (the engine's default)",
    )
    args = parser.parse_args()
    ideal = args.concurrency / args.latency if args.latency > 0 else None
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    runs: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
    print(
        f"latency {args.latency}s, concurrency {args.concurrency}, {args.workers} Ray workers"
        f" per stage, {args.pairs} pairs, journal every {args.journal_seconds}s"
        + (f", ideal {ideal:.0f} req/s" if ideal else "")
    )
    try:
        with fake_teacher(args.latency) as base_url:
            # Alternate the two, so a passing load on the machine hits both alike.
            for number in range(1, args.repeat + 1):
                results = {engine: run_once(base_url, engine, args) for engine in ENGINES}
                for engine, result in results.items():
                    runs[engine].append(result)
                print_table(f"run {number}/{args.repeat}", results, ideal)
    finally:
        ray.shutdown()
    medians = {
        engine: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for engine, results in runs.items()
    }
    print_table(f"median of {args.repeat}", medians, ideal)


if __name__ == "__main__":
    main()
