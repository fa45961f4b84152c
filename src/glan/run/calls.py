"""The ``calls`` table: every paid-for reply by the hash of its request (``Store`` inherits it)."""

from __future__ import annotations

import time
from typing import Any

from glan.llm.types import ChatRequest, ChatResponse


class Calls:
    def cached_call(self, key: str) -> ChatResponse | None:
        row = self.db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, latency, model, batch,"
            " cached_tokens FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        text, finish_reason, tokens_in, tokens_out, latency, model, batch, tokens_cached = row
        return ChatResponse(
            text,
            finish_reason,
            tokens_in,
            tokens_out,
            latency,
            model,
            bool(batch),
            cached=True,
            cached_tokens=tokens_cached,
        )

    def save_call(
        self, request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
    ) -> None:
        values = tuple(call_record(request, response, node_id=node_id, stage=stage).values())
        if self.failure is not None:  # a reply that came in after a failed write: kept
            self.unsaved.append(values)
            return
        self._tx_calls.append(values)
        self._write(_INSERT_CALL, values)

    def usage(self) -> list[tuple[str, str, bool, int, int, int, int]]:
        """(stage, model, batch, calls, tokens in, tokens out, cached tokens in) of every paid-for
        reply."""
        return [
            (stage, model, bool(batch), calls, tokens_in or 0, tokens_out or 0, cached or 0)
            for stage, model, batch, calls, tokens_in, tokens_out, cached in self.db.execute(
                "SELECT stage, model, batch, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),"
                " SUM(cached_tokens) FROM calls GROUP BY stage, model, batch"
            )
        ]


def call_record(
    request: ChatRequest, response: ChatResponse, *, node_id: str, stage: str
) -> dict[str, Any]:
    """A paid-for reply as it is kept: a row of ``calls`` here, of a Ray run's calls/ parts."""
    return {
        "key": request.key,
        "node_id": node_id,
        "stage": stage,
        "model": request.model,
        "request": request.packed(),
        "text": response.text,
        "finish_reason": response.finish_reason,
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "latency": response.latency,
        "batch": response.batch,
        "created_at": time.time(),
        "cached_tokens": response.cached_tokens,
    }


_CALL_COLUMNS = (
    "key, node_id, stage, model, request, text, finish_reason, prompt_tokens,"
    " completion_tokens, latency, batch, created_at, cached_tokens"
)
_INSERT_CALL = f"INSERT OR REPLACE INTO calls ({_CALL_COLUMNS}) VALUES ({', '.join('?' * 13)})"
_RESCUE_CALL = _INSERT_CALL.replace("OR REPLACE", "OR IGNORE")
