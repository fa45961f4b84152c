"""Reading a Ray run directory: what `glan status` and `glan export` need of its Parquet parts.

A Ray run's glan.db holds the narrow stages only; its questions and answers are known from
``rows/`` (finished pairs), ``calls/`` (paid-for replies) and ``failed/`` (see runfiles). Nothing
here imports ray: these run on any machine that can see the directory, with pyarrow and numpy.

Ids are handled as uint64 ``node_key``s in numpy arrays, never as a Python set of strings, so a
run of ten million rows costs tens of megabytes to count.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from glan.config import GenerateConfig
from glan.ids import stable_id
from glan.llm.types import ChatResponse
from glan.run.parts import CALLS, FAILED, ROWS, RunFilesError, RunLocation, node_key
from glan.run.store import Store

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


_KEY_CHARS = 16  # an id's first 16 hex digits are its node_key


def keys_of(ids: pa.Array) -> np.ndarray:
    """``node_key`` of every id of an Arrow string array, done in C: 16 hex digits per id, all
    decoded at once as big-endian uint64s."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(ids) == 0:
        return np.empty(0, dtype=np.uint64)
    prefixes = pc.utf8_slice_codeunits(ids.cast(pa.string()), 0, _KEY_CHARS)
    _, offsets_buffer, data = prefixes.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    offsets = offsets[prefixes.offset : prefixes.offset + len(prefixes) + 1]
    if prefixes.null_count or np.any(np.diff(offsets) != _KEY_CHARS):
        raise RunFilesError("rows/ holds ids that are not glan ids (16+ hex digits)")
    digits = bytes(memoryview(data)[offsets[0] : offsets[-1]])
    try:
        return np.frombuffer(bytes.fromhex(digits.decode("ascii")), dtype=">u8").astype(np.uint64)
    except ValueError:
        raise RunFilesError("rows/ holds ids that are not glan ids (16+ hex digits)") from None


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which of ``keys`` are in ``sorted_keys`` (sorted, unique): a binary search each."""
    import numpy as np

    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.asarray(sorted_keys[at] == keys)


def _row_keys(location: RunLocation, parts: list[str]) -> np.ndarray:
    """The key of every row of ``parts``, repeats included, reading the id column only."""
    import numpy as np

    chunks = [
        keys_of(batch.column("id")) for path in parts for batch in location.read_part(path, ["id"])
    ]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint64)


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` sorted and unique, and those that were there more than once. By a sort and a
    comparison: np.unique hashes first, several times slower on ten million keys."""
    import numpy as np

    keys.sort()
    repeat = keys[1:] == keys[:-1]
    return keys[np.concatenate(([True], ~repeat))[: len(keys)]], np.unique(keys[1:][repeat])


def done_keys(location: RunLocation) -> np.ndarray:
    """The sorted, unique ``node_key`` of every finished answer in rows/."""
    return _unique(_row_keys(location, location.parts(ROWS)))[0]


def finished_keys(location: RunLocation) -> np.ndarray:
    """Keys (``node_key``) of every written pair and of its question, sorted, for the engine as
    it starts (it sets broken parts aside): a question whose pair is written is not asked again,
    nor are the replies of either kept in memory."""
    import numpy as np
    import pyarrow.compute as pc

    keys: list[np.ndarray] = []
    for batch in location.read(ROWS, ["id", "meta.question_id"], set_aside=True):
        keys.append(keys_of(batch.column("id")))
        keys.append(keys_of(pc.struct_field(batch.column("meta"), "question_id")))
    return _unique(np.concatenate(keys))[0] if keys else np.empty(0, dtype=np.uint64)


_REPLY_COLUMNS = [
    "key",
    "text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency",
    "model",
    "batch",
    "cached_tokens",  # absent from parts of older glans: ChatResponse's default (0) stands
]


def stored_replies(location: RunLocation, done: np.ndarray) -> dict[str, ChatResponse]:
    """The replies in calls/ of items whose pair is not written yet: what a killed job had paid
    for. Only the node ids of a part are read, unless some of them are unfinished: resuming a
    big run does not read the texts of every reply it ever had."""
    import numpy as np
    import pyarrow as pa

    replies: dict[str, ChatResponse] = {}
    for path in location.parts(CALLS):
        ids = [keys_of(batch.column("node_id")) for batch in location.read_part(path, ["node_id"])]
        if not ids or contains(done, np.concatenate(ids)).all():
            continue
        for batch in location.read_part(path, ["node_id", *_REPLY_COLUMNS]):
            unfinished = ~contains(done, keys_of(batch.column("node_id")))
            for row in batch.filter(pa.array(unfinished)).to_pylist():
                key = row.pop("key")
                del row["node_id"]
                row["cached_tokens"] = row.get("cached_tokens") or 0
                replies[key] = ChatResponse(**row, cached=True)
    return replies


# -- failures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    id: str
    kind: str  # "question" or "answer"
    root: str  # the discipline's id
    error: str  # of the latest failure
    attempts: int  # failure records of this id, over every run
    failed_at: float  # of the latest failure


def failures(location: RunLocation, done: np.ndarray) -> dict[str, Failure]:
    """The items of failed/ that are still failed, by id. An answer is no longer failed once it
    is in rows/; a question, once its answer ran at all (in rows/, or itself failed), because an
    answer only runs after its question was made."""
    import numpy as np

    latest: dict[str, dict[str, Any]] = {}
    attempts: Counter[str] = Counter()
    for batch in location.read(FAILED):
        for record in batch.to_pylist():
            attempts[record["id"]] += 1
            record["failed_at"] = record["failed_at"] or 0.0
            seen = latest.get(record["id"])
            if seen is None or record["failed_at"] >= seen["failed_at"]:
                latest[record["id"]] = record
    answered = {node_id for node_id, record in latest.items() if record["kind"] == "answer"}
    ids = list(latest)
    # the id whose being done settles each failure: an answer's own, a question's answer
    settling = [
        stable_id(node_id, "answer") if latest[node_id]["kind"] == "question" else node_id
        for node_id in ids
    ]
    settled = contains(done, np.fromiter(map(node_key, settling), np.uint64, len(settling)))
    still: dict[str, Failure] = {}
    for node_id, answer_id, is_settled in zip(ids, settling, settled, strict=True):
        record = latest[node_id]
        if is_settled or (record["kind"] == "question" and answer_id in answered):
            continue
        still[node_id] = Failure(
            id=node_id,
            kind=record["kind"],
            root=record["root"] or "",
            error=record["error"] or "",
            attempts=attempts[node_id],
            failed_at=record["failed_at"],
        )
    return still


def errors(store: Store, failed: dict[str, Failure], limit: int = 10) -> list[tuple[str, str, str]]:
    """(kind, id, error) of the failed items of glan.db and failed/, most recent first, like
    ``Store.errors``."""
    narrow = store.failures(limit)
    wide = [(f.failed_at, f.kind, f.id, f.error) for f in failed.values()]
    recent = heapq.nlargest(limit, [*narrow, *wide], key=lambda entry: entry[0])
    return [(kind, node_id, error) for _, kind, node_id, error in recent]


# -- counts and usage ---------------------------------------------------------------------------


def wide_counts(
    store: Store, done: np.ndarray, failed: dict[str, Failure]
) -> dict[str, dict[str, int]]:
    """{kind: {status: count}} of questions and answers, the shape ``Store.counts`` gives.

    Questions are not recorded when made, only through what followed: a done answer or a failed
    one shows its question was done. Expected are ``questions_per_syllabus`` (of the latest run)
    per finished syllabus; the answers of failed questions are counted there, not as pending."""
    kinds = Counter(failure.kind for failure in failed.values())
    expected = _finished_syllabi(store) * _questions_per_syllabus(store)
    question = {"done": len(done) + kinds["answer"], "failed": kinds["question"]}
    answer = {"done": len(done), "failed": kinds["answer"]}
    question["pending"] = max(0, expected - question["done"] - question["failed"])
    answer["pending"] = max(0, expected - answer["done"] - answer["failed"] - question["failed"])
    return {"question": question, "answer": answer}


def _finished_syllabi(store: Store) -> int:
    return store.counts().get("subject", {}).get("done", 0)


def _questions_per_syllabus(store: Store) -> int:
    config = store.last_invocation()
    return int(config.get("questions_per_syllabus", GenerateConfig().questions_per_syllabus))


def wide_usage(location: RunLocation) -> list[tuple[str, str, bool, int, int, int, int]]:
    """(stage, model, batch, calls, tokens in, tokens out, cached tokens in) of calls/, like
    ``Store.usage``: grouped a batch at a time, then the small per-batch groups summed, so memory
    stays flat."""
    import pyarrow as pa

    keys = ["stage", "model", "batch"]
    tokens = ["prompt_tokens", "completion_tokens", "cached_tokens"]
    partial = [
        pa.Table.from_batches([_with_cached_tokens(batch)])
        .group_by(keys)
        .aggregate([([], "count_all"), *((name, "sum") for name in tokens)])
        for batch in location.read(CALLS, [*keys, *tokens])
    ]
    if not partial:
        return []
    sums = ["count_all", *(f"{name}_sum" for name in tokens)]
    total = pa.concat_tables(partial).group_by(keys).aggregate([(name, "sum") for name in sums])
    return [
        (
            group["stage"],
            group["model"],
            bool(group["batch"]),
            group["count_all_sum"] or 0,
            group["prompt_tokens_sum_sum"] or 0,
            group["completion_tokens_sum_sum"] or 0,
            group["cached_tokens_sum_sum"] or 0,
        )
        for group in total.to_pylist()
    ]


def _with_cached_tokens(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of calls/ with a ``cached_tokens`` column (nulls, counted as 0, for a part
    written before glan kept it)."""
    import pyarrow as pa

    if "cached_tokens" in batch.schema.names:
        return batch
    return batch.append_column("cached_tokens", pa.nulls(batch.num_rows, pa.int64()))
