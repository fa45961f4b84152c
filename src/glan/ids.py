"""Stable ids: the same inputs give the same id on every machine and every run.

An item's id is a hash of its parent's id and its own position or sample index, so resume, dedup,
sharding and provenance all reduce to "is this id done?".
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def canonical_bytes(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace: one text for one value."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def canonical_json(value: Any) -> str:
    return canonical_bytes(value).decode()


def digest_id(data: bytes) -> str:
    """A 20-hex-digit (80-bit) id; collisions are negligible at 10^8 items."""
    return hashlib.sha256(data).hexdigest()[:20]


def stable_id(*parts: Any) -> str:
    """The id of ``parts`` (a parent's id and a position, say)."""
    return digest_id(canonical_bytes(parts))


def stable_int(*parts: Any, bits: int = 63) -> int:
    """A non-negative integer derived from ``parts``: seeds for samplers and per-call seeds."""
    digest = hashlib.sha256(canonical_bytes(parts)).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits)
