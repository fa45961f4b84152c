"""One writer per run directory: ``generate`` and ``curate`` hold ``RUN/glan.lock`` while they
write.

The lock is ``flock`` on that file, so the kernel releases it when the holder exits, however it
exits: a lock file left by a crash (or ``kill -9``) holds nothing, and the next run takes it.
The file says who holds it (pid and command), for the message the next writer gets. Readers
(status, export, report) take no lock: SQLite lets them read while a run writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "glan.lock"


class RunLockedError(Exception):
    """Another process writes to the run directory; the message names it."""


@contextlib.contextmanager
def run_lock(directory: str | Path, command: str) -> Iterator[None]:
    """Hold the run directory ``directory`` (created if missing) for ``command``, or raise
    ``RunLockedError`` at once when another process holds it."""
    directory = Path(directory)
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunLockedError(
            f"{directory} is not writable ({error.strerror or error}); glan {command} writes"
            " to the run directory"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"another glan run ({_holder(fd)}) is writing to {directory}; wait for it to"
                " finish or stop it, then run the command again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} glan {command}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: 'pid 1234, glan generate'."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        if text and text[0].isdigit():
            return f"pid {text[0]}" + (f", {' '.join(text[1:])}" if len(text) > 1 else "")
    return "pid unknown"
