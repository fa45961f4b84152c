"""Joining Ray, for generation and curation alike: a cluster that cannot be reached is one line
within seconds, not minutes of Ray's own retries and logs."""

from __future__ import annotations

import contextlib
import logging
import socket
import warnings

from glan.config import ConfigError

CONNECT_SECONDS = 5.0  # for the head node's port to answer


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address`` ("auto": the one this machine is in; "host:port" or
    "ray://host:port"), or start Ray on this machine (None), quietly: glan's own display shows
    progress, and what stops a job reaches the user as its exception."""
    import ray
    from ray.data import DataContext

    # Ray starts itself on first use; after Ctrl-C has shut it down, a thread still waiting on a
    # job would start a new one and carry on. (The switch is read at import.)
    with contextlib.suppress(ImportError, AttributeError):
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False
    if not ray.is_initialized():
        check_reachable(address)
        # Ray's notes to its operators (token auth, Ray Data's tuning hints) read as trouble on
        # a user's terminal; Ray's own logs keep them
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data")
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            reason = str(error).strip().rstrip(".")
            raise ConfigError(f"cannot join the Ray cluster at {address}: {reason}") from None
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    DataContext.get_current().enable_progress_bars = False


def check_reachable(address: str | None) -> None:
    """Fail fast on a head node that does not answer: ``ray.init`` would wait for minutes (and
    a run would pay for its narrow stages before getting there)."""
    if address is None or address in ("auto", "local"):
        return  # Ray finds (or refuses) these itself, at once
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    try:
        with socket.create_connection((host or where, int(port)), timeout=CONNECT_SECONDS):
            pass
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({error}): check that it runs and that the"
            " address is its head node's host:port (6379 unless it was started with another)"
        ) from None
