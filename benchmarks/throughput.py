"""How close the pipeline comes to the ideal request rate, and to a bare aiohttp loop.

    python benchmarks/throughput.py --latency 0.5 --concurrency 256 --pairs 4000
    python benchmarks/throughput.py --latency 0 --concurrency 64 --pairs 4000

Runs a real `glan` pipeline (1 discipline, 4 subjects) against the fake teacher in another
process, measures requests/s over the question and answer stages from the store's call log, then
sends the very same question and answer requests with a bare aiohttp loop at the same concurrency.
Ideal = concurrency / latency.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from _fake_server import fake_teacher

from glan import api
from glan.config import GenerateConfig
from glan.llm.types import unpack_request

SUBJECTS = 4


def run_pipeline(base_url: str, run_dir: Path, pairs: int, concurrency: int) -> float:
    config = GenerateConfig(
        base_url=base_url,
        api_key="bench",
        disciplines=["Mathematics"],
        subject_queries=2,
        max_subjects_per_discipline=SUBJECTS,
        questions_per_syllabus=pairs // SUBJECTS,
        concurrency=concurrency,
    )
    result = api.generate(config, run_dir, progress="none")
    assert result.rows == pairs, result
    db = sqlite3.connect(run_dir / "glan.db")
    count, first, last = db.execute(
        "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM calls"
        " WHERE stage IN ('question', 'answer')"
    ).fetchone()
    return count / (last - first)


def wide_bodies(run_dir: Path) -> list[bytes]:
    db = sqlite3.connect(run_dir / "glan.db")
    rows = db.execute("SELECT request FROM calls WHERE stage IN ('question', 'answer')")
    return [orjson.dumps(unpack_request(blob)["body"]) for (blob,) in rows]


async def bare_loop(base_url: str, bodies: list[bytes], concurrency: int) -> float:
    """The floor: one session, a semaphore, nothing else."""
    url = f"{base_url}/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(body: bytes) -> None:
            async with limit, session.post(url, data=body, headers=headers) as response:
                orjson.loads(await response.read())

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return len(bodies) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians are shown")
    args = parser.parse_args()
    engine_rates, bare_rates = [], []
    with fake_teacher(args.latency) as base_url:
        # Alternate the two, so a passing load on the machine hits both alike.
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp)
                engine_rates.append(run_pipeline(base_url, run_dir, args.pairs, args.concurrency))
                bodies = wide_bodies(run_dir)
            bare_rates.append(asyncio.run(bare_loop(base_url, bodies, args.concurrency)))
    engine, bare = statistics.median(engine_rates), statistics.median(bare_rates)
    print(
        f"latency {args.latency}s, concurrency {args.concurrency}, {args.pairs} pairs,"
        f" median of {args.repeat}"
    )
    if args.latency > 0:
        ideal = args.concurrency / args.latency
        print(f"  ideal          {ideal:8.0f} req/s")
        print(f"  glan pipeline  {engine:8.0f} req/s  {engine / ideal:6.1%} of ideal")
        print(f"  bare aiohttp   {bare:8.0f} req/s  {bare / ideal:6.1%} of ideal")
    else:
        print(f"  glan pipeline  {engine:8.0f} req/s  {engine / bare:6.1%} of the bare loop")
        print(f"  bare aiohttp   {bare:8.0f} req/s")
    runs = f"glan {[round(r) for r in engine_rates]}, bare {[round(r) for r in bare_rates]}"
    print(f"  (every run: {runs})")


if __name__ == "__main__":
    main()
