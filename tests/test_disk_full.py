"""A full disk says so (issue 10, item 6): one line naming where, saying that nothing paid for was
lost and that rerunning resumes; no traceback, a non-zero exit; and the rerun, with space again,
asks nothing twice. For real: a small tmpfs (needs root to mount), and the file size limit
(RLIMIT_FSIZE, any user)."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from conftest import API_KEY, cli_env, read_rows
from glan.llm.types import ChatRequest, ChatResponse
from glan.run.jsonl import JsonlOutput, OutputWriteError
from glan.run.space import RESERVE_NAME, is_full, out_of_space
from glan.run.store import RESCUED_META, Store, StoreWriteError

ROWS = 2 * 5 * 40  # disciplines x subjects x questions: enough to fill a few MB


def big_run(run: Path, base_url: str) -> list[str]:
    return [
        *("generate", "--out", str(run), "--base-url", base_url, "--api-key", API_KEY),
        *("--disciplines", "Mathematics,Chemistry", "--subject-queries", "2"),
        *("--max-subjects-per-discipline", "5", "--questions-per-syllabus", "40"),
        *("--progress", "none"),
    ]


def glan(*args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def limited() -> None:  # writes past ``limit`` bytes fail with EFBIG instead of a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "glan", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        preexec_fn=limited if limit is not None else None,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    others = [line for line in result.stderr.splitlines() if line and not line.startswith("plan:")]
    assert others == lines, result.stderr  # nothing else: no log lines, no warnings
    return lines[0]


def sent_twice(teacher) -> int:
    counts = Counter(orjson.dumps(b, option=orjson.OPT_SORT_KEYS) for b in teacher.requests)
    return sum(1 for count in counts.values() if count > 1)


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``. The project's machines and CI run as root on
    Linux; elsewhere the test fails and says why rather than passing without checking."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.fail("mounting a small tmpfs needs root on Linux (as on the project's machines)")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def grow(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


@pytest.mark.xdist_group("disk")
def test_a_run_that_fills_the_disk_says_so_and_resumes(tmp_path, teacher):
    with small_disk(tmp_path / "disk", "5m") as disk:
        run = disk / "run"
        full = glan(*big_run(run, teacher.base_url))
        line = error_line(full)
        assert f"the disk is full: no space left on {disk}, which holds {run}" in line
        assert "writing glan.db: database or disk is full" in line
        assert "nothing paid for was lost: every reply received is stored" in line
        assert "Free some space and run the same command again: it resumes" in line
        assert not (run / RESERVE_NAME).exists()  # given back
        asked = teacher.request_count
        assert 0 < asked < ROWS

        grow(disk, "64m")
        resumed = glan(*big_run(run, teacher.base_url))
        assert resumed.returncode == 0, resumed.stderr
        assert len(read_rows(run)) == ROWS
        assert sent_twice(teacher) == 0  # every reply received before the disk filled was kept
        assert not (run / RESERVE_NAME).exists()


@pytest.mark.xdist_group("disk")
def test_a_disk_full_before_the_start_sends_nothing(tmp_path, teacher):
    with small_disk(tmp_path / "disk", "1m") as disk:
        line = error_line(glan(*big_run(disk / "run", teacher.base_url)))
        assert f"the disk is full: no space left on {disk}" in line
        assert "nothing was sent" in line
        assert teacher.request_count == 0


def test_the_file_size_limit_stops_a_run_in_one_line_and_it_resumes(tmp_path, teacher):
    """Any user can limit the size of the files a process writes: SQLite then fails to grow
    its write-ahead log, as on a full disk, but says "disk I/O error"."""
    run = tmp_path / "run"
    limited = glan(*big_run(run, teacher.base_url), limit=3_000_000)
    line = error_line(limited)
    assert f"writing {run}/" in line and "failed (" in line
    assert "this process may write files of at most 2.9 MB: see ulimit -f" in line
    assert "nothing paid for was lost" in line or "will be asked again" in line
    assert "run the same command again: it resumes where it stopped" in line
    asked = teacher.request_count
    assert 0 < asked < ROWS

    resumed = glan(*big_run(run, teacher.base_url))
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_rows(run)) == ROWS
    if "nothing paid for was lost" in line:
        assert sent_twice(teacher) == 0


# -- the parts ------------------------------------------------------------------------------------


def call(n: int) -> tuple[ChatRequest, ChatResponse]:
    request = ChatRequest(model="m", messages=({"role": "user", "content": f"q{n} " * 500},))
    return request, ChatResponse(text=f"a{n} " * 500, prompt_tokens=10, completion_tokens=10)


def fill(store: Store) -> int:
    """Save calls until the store cannot commit; returns how many were saved."""
    for n in range(10_000):
        try:
            store.save_call(*call(n), node_id=f"n{n}", stage="answer")
            store.commit()
        except StoreWriteError:
            return n + 1
    raise AssertionError("the store never filled up")


def test_a_failed_commit_keeps_its_replies_for_the_rescue(tmp_path):
    store = Store.open(tmp_path)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 40}")  # SQLITE_FULL soon
    saved = fill(store)
    assert store.failure is not None and is_full(store.failure.cause)
    assert len(store.unsaved) == 1  # the reply of the transaction that failed
    store.save_call(*call(saved), node_id="late", stage="answer")  # one still coming in
    assert len(store.unsaved) == 2
    with pytest.raises(StoreWriteError):
        store.set_meta("key", 1)  # no write is tried any more
    store.db.execute("PRAGMA max_page_count = 1000000")  # the reserve, given back
    assert store.rescue() == 0
    count = store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    assert count == saved + 1
    assert store.get_meta(RESCUED_META) is True
    store.close()


def test_a_rescue_that_cannot_store_says_how_many_were_lost(tmp_path):
    store = Store.open(tmp_path)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 40}")
    fill(store)
    assert store.rescue() == 1
    store.close()


def test_a_jsonl_write_that_fails_is_raised_by_flush_not_by_the_commit(tmp_path):
    output = JsonlOutput(tmp_path / "out.jsonl")
    output._file = _Failing()  # type: ignore[assignment]  # a disk that takes nothing
    output.write_json('{"id": 1}')  # no exception: a commit's callback must not fail
    with pytest.raises(OutputWriteError, match="No space left on device"):
        output.flush()
    output.close()


class _Failing:
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(28, "No space left on device"), True),
        (OSError(122, "Disk quota exceeded"), True),
        (OSError(27, "File too large"), True),
        (OSError(13, "Permission denied"), False),
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("disk I/O error"), False),
    ],
)
def test_which_errors_mean_a_full_disk(error, full):
    assert is_full(error) is full


def test_the_line_counts_what_could_not_be_kept(tmp_path):
    error = OSError(28, "No space left on device")
    line = str(out_of_space(tmp_path, "glan.db", error, lost=2, abandoned=1))
    assert "2 replies received at the end could not be stored" in line
    assert "1 request still out after waiting for it was abandoned" in line
    assert "nothing paid for was lost" not in line
