"""A base URL that is no OpenAI-compatible API stops at once with one line (issue 16, cases 2
and 3): a web server's HTML, JSON without ``choices``, a URL that is not http(s)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiohttp import web

from inprocess import run_glan
from test_cli import generate_args
from test_cli_errors import one_line


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # glan hangs up once it has seen enough: no broken pipe tracebacks on stderr


@contextmanager
def serving(handler) -> Iterator[str]:
    """An http.server on 127.0.0.1; yields its ``/v1`` base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _HtmlForAll(BaseHTTPRequestHandler):
    """A web site that answers every request with 200 and a page."""

    def _page(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def json_without_choices() -> Iterator[str]:
    """An aiohttp server answering every POST with 200 and JSON that is no chat completion."""

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "ok", "data": []})

    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", reply)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"], holder["port"] = runner, runner.addresses[0][1]
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{holder['port']}/v1"
    finally:
        runner = holder["runner"]
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def generate_against(tmp_path, base_url):
    started = time.monotonic()
    result = run_glan(*generate_args(tmp_path / "run", base_url, "--max-retries", "6"))
    return result, time.monotonic() - started


def test_python_http_server_as_base_url_stops_at_once(tmp_path):
    with serving(partial(_Quiet, directory=str(tmp_path))) as base_url:
        result, seconds = generate_against(tmp_path, base_url)
    line = one_line(result, 1, f"the server at {base_url} is not an OpenAI-compatible API")
    assert "an HTML page" in line and "check --base-url" in line
    assert seconds < 15  # no 7 attempts with backoff


def test_a_server_answering_200_with_html_stops_at_once(tmp_path):
    with serving(_HtmlForAll) as base_url:
        result, seconds = generate_against(tmp_path, base_url)
    line = one_line(result, 1, "is not an OpenAI-compatible API")
    assert "an HTML page 'Welcome to nginx!'" in line and "HTTP 200" in line
    assert seconds < 15


def test_a_server_answering_json_without_choices_stops_at_once(tmp_path):
    with json_without_choices() as base_url:
        result, seconds = generate_against(tmp_path, base_url)
    line = one_line(result, 1, "is not an OpenAI-compatible API")
    assert "JSON without 'choices' (keys: status, data)" in line
    assert seconds < 15


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/v1", "localhost:8000/v1", "file:///tmp/v1"])
def test_a_base_url_that_is_not_http_is_refused_at_once(tmp_path, url):
    result, seconds = generate_against(tmp_path, url)
    one_line(result, 1, "is not an http:// or https:// URL")
    assert seconds < 10
    build = run_glan("taxonomy", "build", "--out", str(tmp_path / "t.yaml"), "--base-url", url)
    one_line(build, 1, "is not an http:// or https:// URL")


def test_check_says_a_web_server_is_no_openai_api(tmp_path):
    with serving(partial(_Quiet, directory=str(tmp_path))) as base_url:
        result = run_glan("check", "--base-url", base_url, "--api-key", "x")
    one_line(result, 1, f"the server at {base_url} is not an OpenAI-compatible API")
    with json_without_choices() as base_url:
        result = run_glan("check", "--base-url", base_url, "--api-key", "x")
    one_line(result, 1, "JSON without 'choices'")
