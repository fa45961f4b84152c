"""When the disk of a run directory fills up: which errors mean that, and the one line that says so.

A run that cannot write stops; every reply already committed stays, and the replies received in
its last moment (not yet committed) are written once more after the run's reserve (a file of a
few MB, ``glan.reserve``, set aside while a run writes) is given back. So the line can say that
nothing paid for was lost, and it says so only when that is true.
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
from pathlib import Path

RESERVE_NAME = "glan.reserve"
RESERVE_MIN = 2 << 20  # bytes; and 32 KiB per request that may be in flight
RESERVE_PER_REQUEST = 32 << 10
RESERVE_MAX = 64 << 20

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")
_SQLITE_FULL = 13


def reserve_size(concurrency: int) -> int:
    return max(RESERVE_MIN, min(RESERVE_MAX, concurrency * RESERVE_PER_REQUEST))


def is_full(error: BaseException) -> bool:
    """Whether ``error`` says that a disk (or a quota, or the file size limit) is full."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(error, sqlite3.Error) and code == _SQLITE_FULL:
        return True
    text = str(error).lower()
    return any(phrase in text for phrase in _FULL_TEXTS) or "file too large" in text


class OutOfSpace(Exception):
    """A run stopped because a write in its directory failed (most often: the disk is full).
    The message is one line: where, what was kept, and that rerunning resumes."""


def out_of_space(
    where: Path,
    written: str,
    error: BaseException,
    *,
    lost: int = 0,
    abandoned: int = 0,
    sent: bool = True,
) -> OutOfSpace:
    """The error that ends a run whose write of ``written`` (a file name) in ``where`` failed
    with ``error``; ``lost``: replies received that could not be stored; ``abandoned``: items
    whose request was still out when the run gave up waiting; ``sent``: whether the run had sent
    anything yet."""
    detail = _detail(error)
    if is_full(error):
        mount = _mount(where)
        on = f"{mount}, which holds {where}" if mount != where.resolve() else str(where)
        head = f"the disk is full: no space left on {on} (writing {written}: {detail})"
        fix = "Free some space"
    else:
        limit = _size_limit()
        head = f"writing {where / written} failed ({detail}{limit})"
        fix = "Check the disk and the file size limit" if limit else "Check the disk"
    if not sent:
        kept = "nothing was sent"
    elif lost == 0 and abandoned == 0:
        kept = "nothing paid for was lost: every reply received is stored"
    else:
        missed = []
        if lost:
            missed.append(
                f"{lost} {'reply' if lost == 1 else 'replies'} received at the end could not be"
                " stored"
            )
        if abandoned:
            missed.append(
                "1 request still out after waiting for it was abandoned"
                if abandoned == 1
                else f"{abandoned} requests still out after waiting for them were abandoned"
            )
        kept = f"{' and '.join(missed)} (they will be asked again); every other reply is stored"
    again = ": it resumes where it stopped" if sent else ""
    return OutOfSpace(f"{head}; {kept}. {fix} and run the same command again{again}")


def _detail(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    return text.rsplit(": ", 1)[-1] if ": " in text else text


def _size_limit() -> str:
    """A limit on the size of the files this process may write (``ulimit -f``), when one is set:
    SQLite reports hitting it as an I/O error."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return ""
    return f"; this process may write files of at most {_size(soft)}: see ulimit -f"


def _mount(where: Path) -> Path:
    """Where the filesystem that holds ``where`` is mounted."""
    path = where.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
