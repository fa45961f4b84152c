"""Peak memory does not grow with the size of a run: the store is the queue, not a list in RAM.

    python benchmarks/memory.py 1000 10000 100000

Each size runs in a fresh process (1 discipline, 10 subjects, size/10 questions each) against the
fake teacher at zero latency, and reports the process's peak RSS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from _fake_server import fake_teacher

CHILD = """
import resource, sys
from glan import api
from glan.config import GenerateConfig
pairs = int(sys.argv[2])
config = GenerateConfig(
    base_url=sys.argv[1], api_key="bench", disciplines=["Mathematics"], subject_queries=3,
    max_subjects_per_discipline=10, questions_per_syllabus=pairs // 10, concurrency=128,
)
result = api.generate(config, sys.argv[3], progress="none")
assert result.rows == pairs, result
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sizes", type=int, nargs="*", default=[1000, 10_000, 100_000])
    args = parser.parse_args()
    with fake_teacher(0.0) as base_url:
        print(f"{'answers':>8} {'peak RSS':>10} {'time':>8}")
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as run_dir:
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, base_url, str(size), run_dir],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                elapsed = time.perf_counter() - started
            peak_mib = int(out.strip().splitlines()[-1]) / 1024
            print(f"{size:>8,} {peak_mib:>8.0f} MiB {elapsed:>7.0f}s", flush=True)


if __name__ == "__main__":
    main()
