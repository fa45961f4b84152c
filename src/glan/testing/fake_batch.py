"""A fake provider batch API (OpenAI's and Azure OpenAI's shapes) served beside the fake teacher.

Routes, under ``/v1`` (OpenAI: ``Authorization: Bearer``) and ``/openai`` (Azure OpenAI: an
``api-key`` header and an ``api-version`` query parameter):

- ``POST /files`` (multipart, purpose=batch), ``GET /files/{id}``, ``GET /files/{id}/content``
- ``POST /batches``, ``GET /batches`` (newest first), ``GET /batches/{id}``,
  ``POST /batches/{id}/cancel``

A batch is ``validating``, then ``in_progress``, then final ``delay`` seconds after it was created
(evaluated when it is looked at, so nothing runs in the background). Each line's output is what
the chat endpoint answers to the same body. Faults are injected per batch: expire the next batch
after N lines, fail a fraction (or the matching) lines of the next batch, fail a whole batch.
Every upload and batch is recorded, so a test can check that nothing was paid for twice.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Reply = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]

OPENAI_PREFIX = "/v1"
AZURE_PREFIX = "/openai"
_ENDPOINTS = {OPENAI_PREFIX: "/v1/chat/completions", AZURE_PREFIX: "/chat/completions"}
_FINAL = frozenset({"completed", "expired", "cancelled", "failed"})
_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
_LINE_ERRORS = {
    400: ("invalid_request_error", "The request is invalid."),
    429: ("rate_limit_exceeded", "Rate limit reached."),
    500: ("server_error", "The server had an error while processing your request."),
}


@dataclass(frozen=True)
class Upload:
    """A file as it was uploaded."""

    file_id: str
    purpose: str
    filename: str
    lines: tuple[dict[str, Any], ...]
    azure: bool
    auth: str  # "bearer" or "api-key"
    api_version: str | None

    @property
    def custom_ids(self) -> list[str]:
        return [str(line.get("custom_id")) for line in self.lines]


@dataclass(frozen=True)
class CreatedBatch:
    """A batch as it was created (what a provider would bill)."""

    batch_id: str
    input_file_id: str
    endpoint: str
    custom_ids: tuple[str, ...]
    azure: bool
    auth: str
    api_version: str | None
    metadata: dict[str, Any] | None


@dataclass
class _Fault:
    expire_after: int | None = None  # lines processed before the batch expires
    fail_fraction: float = 0.0
    fail_match: str | None = None
    fail_status: int = 500
    reject: str | None = None  # the whole batch fails with this message


@dataclass
class _Batch:
    record: CreatedBatch
    lines: tuple[dict[str, Any], ...]
    fault: _Fault
    created: float  # monotonic
    created_at: int  # unix
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    errors: dict[str, Any] | None = None
    cancel: bool = False
    times: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)  # custom_id -> ok, failed, unfinished


class FakeBatchAPI:
    """The batch endpoints; ``FakeTeacher.batch`` is one, served on the teacher's port.

    ``reply`` answers one chat body as the chat endpoint would; ``api_key`` returns the key to
    require (None: any).
    """

    def __init__(self, reply: Reply, api_key: Callable[[], str | None]) -> None:
        self._reply = reply
        self._api_key = api_key
        self._lock = threading.Lock()
        self.delay = 0.2  # seconds from creation to a final status
        self.enabled = True  # False: a server without a batch API (every route is a 404)
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._batches: dict[str, _Batch] = {}
        self._faults: list[_Fault] = []
        self._uploads: list[Upload] = []
        self._created: list[CreatedBatch] = []
        self._polls: Counter[str] = Counter()

    # -- faults, for the next batches created

    def expire_next(self, after_lines: int) -> None:
        """The next batch expires after ``after_lines`` lines: those have output, the rest not."""
        self._queue(_Fault(expire_after=after_lines))

    def fail_next(
        self, fraction: float = 1.0, *, match: str | None = None, status: int = 500
    ) -> None:
        """In the next batch, ``fraction`` of the lines (those containing ``match``, if given)
        get an error response with ``status`` in the error file."""
        if status not in _LINE_ERRORS:
            raise ValueError(f"status must be one of {sorted(_LINE_ERRORS)}")
        self._queue(_Fault(fail_fraction=fraction, fail_match=match, fail_status=status))

    def reject_next(self, message: str = "The batch failed validation.") -> None:
        """The next batch ends ``failed`` with no output at all."""
        self._queue(_Fault(reject=message))

    def _queue(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    # -- recording

    @property
    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._uploads)

    @property
    def created(self) -> list[CreatedBatch]:
        """Batches created, in order: each one a provider would have billed."""
        with self._lock:
            return list(self._created)

    def polls(self, batch_id: str) -> int:
        """How many times ``GET /batches/{batch_id}`` was asked."""
        with self._lock:
            return self._polls[batch_id]

    def status(self, batch_id: str) -> str:
        with self._lock:
            batch = self._batches[batch_id]
            self._advance(batch)
            return batch.status

    def outcomes(self, batch_id: str) -> dict[str, str]:
        """What became of each line of a final batch: ``ok``, ``failed`` or ``unfinished``."""
        with self._lock:
            batch = self._batches[batch_id]
            self._advance(batch)
            return dict(batch.outcomes)

    def submitted_ids(self) -> list[str]:
        """Every custom_id sent in a created batch, repeats included."""
        return [custom_id for batch in self.created for custom_id in batch.custom_ids]

    def reset(self) -> None:
        """Forget the recordings and queued faults (files and batches stay readable)."""
        with self._lock:
            self._faults.clear()
            self._uploads.clear()
            self._created.clear()
            self._polls.clear()

    # -- routes

    def add_routes(self, app: web.Application) -> None:
        for prefix in (OPENAI_PREFIX, AZURE_PREFIX):
            app.router.add_post(f"{prefix}/files", self._guarded(self._upload, prefix))
            app.router.add_get(f"{prefix}/files/{{id}}", self._guarded(self._file, prefix))
            app.router.add_get(
                f"{prefix}/files/{{id}}/content", self._guarded(self._content, prefix)
            )
            app.router.add_post(f"{prefix}/batches", self._guarded(self._create, prefix))
            app.router.add_get(f"{prefix}/batches", self._guarded(self._list, prefix))
            app.router.add_get(f"{prefix}/batches/{{id}}", self._guarded(self._get, prefix))
            app.router.add_post(
                f"{prefix}/batches/{{id}}/cancel", self._guarded(self._cancel, prefix)
            )

    def _guarded(self, handler: Callable[..., Any], prefix: str) -> Callable[[web.Request], Any]:
        azure = prefix == AZURE_PREFIX

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.enabled:
                return _json({"detail": "Not Found"}, 404)
            key = self._api_key()
            if azure:
                if key is not None and request.headers.get("api-key") != key:
                    return _error(401, "Access denied due to invalid subscription key.", "401")
                if "api-version" not in request.query:
                    return _error(404, "Resource not found (no api-version given).", "404")
            elif key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                return _error(401, "Incorrect API key provided", "invalid_api_key")
            return await handler(request, azure)

        return guarded

    async def _upload(self, request: web.Request, azure: bool) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or purpose != "batch":
            return _error(400, "Expected a multipart 'file' with purpose 'batch'.", "invalid")
        content = upload.file.read()
        try:
            lines = tuple(orjson.loads(line) for line in content.splitlines() if line.strip())
        except orjson.JSONDecodeError:
            return _error(400, "The file is not valid JSONL.", "invalid_file")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        info = _file_info(file_id, upload.filename, len(content), "pending" if azure else None)
        with self._lock:
            self._files[file_id] = (info, content)
            self._uploads.append(
                Upload(
                    file_id,
                    str(purpose),
                    upload.filename,
                    lines,
                    azure,
                    *_auth(request),
                )
            )
        return _json(info)

    async def _file(self, request: web.Request, azure: bool) -> web.Response:
        with self._lock:
            found = self._files.get(request.match_info["id"])
            if found is None:
                return _error(404, "No such file.", "not_found")
            info = found[0]
            if info.get("status") == "pending":  # Azure: processed by the time it is asked for
                info["status"] = "processed"
                return _json({**info, "status": "pending"})
        return _json(info)

    async def _content(self, request: web.Request, azure: bool) -> web.Response:
        with self._lock:
            found = self._files.get(request.match_info["id"])
        if found is None:
            return _error(404, "No such file.", "not_found")
        return web.Response(body=found[1], content_type="application/octet-stream")

    async def _create(self, request: web.Request, azure: bool) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "The request body is not a JSON object.", "invalid_request_error")
        file_id = body.get("input_file_id")
        with self._lock:
            found = self._files.get(str(file_id))
            if found is None:
                return _error(400, f"No file {file_id!r}.", "invalid_request_error")
            info, content = found
            if info.get("status") == "pending":
                return _error(400, f"File {file_id} is still being processed.", "invalid")
            lines = tuple(orjson.loads(line) for line in content.splitlines() if line.strip())
            batch_id = f"batch_{uuid.uuid4().hex[:24]}"
            record = CreatedBatch(
                batch_id,
                str(file_id),
                str(body.get("endpoint")),
                tuple(str(line.get("custom_id")) for line in lines),
                azure,
                *_auth(request),
                body.get("metadata"),
            )
            fault = self._faults.pop(0) if self._faults else _Fault()
            batch = _Batch(record, lines, fault, time.monotonic(), int(time.time()))
            problem = _invalid(body, lines, _ENDPOINTS[AZURE_PREFIX if azure else OPENAI_PREFIX])
            if problem is not None:
                batch.fault = _Fault(reject=problem)
            self._batches[batch_id] = batch
            self._created.append(record)
            return _json(self._object(batch))

    async def _get(self, request: web.Request, azure: bool) -> web.Response:
        batch_id = request.match_info["id"]
        with self._lock:
            self._polls[batch_id] += 1
            batch = self._batches.get(batch_id)
            if batch is None:
                return _error(404, f"No batch {batch_id}.", "not_found")
            self._advance(batch)
            return _json(self._object(batch))

    async def _list(self, request: web.Request, azure: bool) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        with self._lock:
            ordered = [b for b in reversed(self._batches.values()) if b.record.azure == azure]
            if after is not None:
                ids = [b.record.batch_id for b in ordered]
                ordered = ordered[ids.index(after) + 1 :] if after in ids else []
            page = ordered[:limit]
            for batch in page:
                self._advance(batch)
            data = [self._object(batch) for batch in page]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(ordered) > limit,
            }
        )

    async def _cancel(self, request: web.Request, azure: bool) -> web.Response:
        with self._lock:
            batch = self._batches.get(request.match_info["id"])
            if batch is None:
                return _error(404, "No such batch.", "not_found")
            self._advance(batch)
            if batch.status not in _FINAL:
                batch.cancel = True
                batch.status = "cancelling"
            return _json(self._object(batch))

    # -- the batch's life (called with the lock held)

    def _advance(self, batch: _Batch) -> None:
        if batch.status in _FINAL:
            return
        elapsed = time.monotonic() - batch.created
        if batch.cancel:
            self._finish(batch, "cancelled", processed=0)
        elif batch.fault.reject is not None and elapsed >= self.delay * 0.3:
            batch.errors = {
                "object": "list",
                "data": [{"code": "invalid_request", "message": batch.fault.reject, "line": None}],
            }
            self._finish(batch, "failed", processed=0)
        elif elapsed >= self.delay:
            expire = batch.fault.expire_after
            if expire is not None and expire < len(batch.lines):
                self._finish(batch, "expired", processed=expire)
            else:
                self._finish(batch, "completed", processed=len(batch.lines))
        elif elapsed >= self.delay * 0.3:
            batch.status = "in_progress"
            batch.times.setdefault("in_progress_at", int(time.time()))

    def _finish(self, batch: _Batch, status: str, processed: int) -> None:
        outputs: list[bytes] = []
        errors: list[bytes] = []
        fault = batch.fault
        for number, line in enumerate(batch.lines):
            custom_id = line.get("custom_id")
            request_id = f"req_{hashlib.md5(str(custom_id).encode()).hexdigest()[:16]}"
            entry: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:16]}"}
            entry["custom_id"] = custom_id
            if number >= processed:
                batch.outcomes[str(custom_id)] = "unfinished"
                if status == "expired":  # OpenAI lists unfinished lines in the error file
                    errors.append(orjson.dumps({**entry, "response": None, "error": _EXPIRED}))
                continue
            body = line.get("body") if isinstance(line.get("body"), dict) else {}
            text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
            if (fault.fail_match is None or fault.fail_match in text) and _drawn(
                str(custom_id), fault.fail_fraction
            ):
                code, message = _LINE_ERRORS[fault.fail_status]
                error = {"message": message, "type": code, "param": None, "code": None}
                response = {
                    "status_code": fault.fail_status,
                    "request_id": request_id,
                    "body": {"error": error},
                }
                errors.append(orjson.dumps({**entry, "response": response, "error": None}))
                batch.failed += 1
                batch.outcomes[str(custom_id)] = "failed"
                continue
            status_code, payload = self._reply(body)
            response = {"status_code": status_code, "request_id": request_id, "body": payload}
            target = outputs if status_code == 200 else errors
            target.append(orjson.dumps({**entry, "response": response, "error": None}))
            batch.completed += status_code == 200
            batch.failed += status_code != 200
            batch.outcomes[str(custom_id)] = "ok" if status_code == 200 else "failed"
        if outputs:
            batch.output_file_id = self._store_file(f"{batch.record.batch_id}_output", outputs)
        if errors:
            batch.error_file_id = self._store_file(f"{batch.record.batch_id}_error", errors)
        batch.status = status
        batch.times[f"{status}_at"] = int(time.time())

    def _store_file(self, name: str, lines: list[bytes]) -> str:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        content = b"\n".join(lines) + b"\n"
        self._files[file_id] = (_file_info(file_id, f"{name}.jsonl", len(content), None), content)
        return file_id

    def _object(self, batch: _Batch) -> dict[str, Any]:
        record = batch.record
        return {
            "id": record.batch_id,
            "object": "batch",
            "endpoint": record.endpoint,
            "errors": batch.errors,
            "input_file_id": record.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "expires_at": batch.created_at + 24 * 3600,
            **batch.times,
            "request_counts": {
                "total": len(batch.lines),
                "completed": batch.completed,
                "failed": batch.failed,
            },
            "metadata": record.metadata,
        }


def _invalid(body: dict[str, Any], lines: tuple[dict[str, Any], ...], endpoint: str) -> str | None:
    """What a provider's validation would reject the batch for, if anything."""
    if body.get("endpoint") != endpoint:
        return f"endpoint must be {endpoint}, not {body.get('endpoint')!r}"
    if body.get("completion_window") != "24h":
        return "completion_window must be 24h"
    seen: set[Any] = set()
    models: set[Any] = set()
    for number, line in enumerate(lines, 1):
        if line.get("method") != "POST" or line.get("url") != endpoint:
            return f"line {number}: method must be POST and url {endpoint}"
        if line.get("custom_id") in seen or not line.get("custom_id"):
            return f"line {number}: custom_id missing or not unique"
        seen.add(line.get("custom_id"))
        if not isinstance(line.get("body"), dict):
            return f"line {number}: no body"
        models.add(line["body"].get("model"))
    if len(models) > 1:
        return "every request of a batch must use the same model"
    return None


def _drawn(custom_id: str, fraction: float) -> bool:
    """Whether a line falls in ``fraction`` of the lines, decided by its id (reproducible)."""
    point = int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=4).digest()) / 2**32
    return point < fraction


def _auth(request: web.Request) -> tuple[str, str | None]:
    """How the request authenticated itself, and its api-version."""
    if "api-key" in request.headers:
        auth = "api-key"
    elif request.headers.get("Authorization", "").startswith("Bearer "):
        auth = "bearer"
    else:
        auth = "none"
    return auth, request.query.get("api-version")


def _file_info(file_id: str, filename: str, size: int, status: str | None) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": "batch",
        "status": status or "processed",
    }


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _error(status: int, message: str, code: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return _json({"error": error}, status)
