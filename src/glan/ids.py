"""Stable ids: the same inputs give the same id on every machine and every run.

An item's id is a hash of its parent's id and its own position or sample index, so resume, dedup,
sharding and provenance all reduce to "is this id done?".
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: one text for one value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stable_id(*parts: Any) -> str:
    """A 20-hex-digit (80-bit) id of ``parts``; collisions are negligible at 10^8 items."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:20]


def stable_int(*parts: Any, bits: int = 63) -> int:
    """A non-negative integer derived from ``parts``: seeds for samplers and per-call seeds."""
    digest = hashlib.sha256(canonical_json(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits)
