"""``glan curate --engine ray``: the same curation, as Ray Data over the run's rows.

Screening is a batch map over a pool of actors. A task is one Parquet part of a Ray run (with the
numbers the run's index gave its rows) or a range of a local run's rows (read from its glan.db,
so a local run needs Ray on this machine or a shared filesystem). Each actor holds a ``Screener``
built as a local worker builds one, except that the benchmark n-grams are loaded once, on the
driver, and reach the actors with their arguments (broadcast once, through the object store).
For every row it gives back the verdict, and for the rows that stay their dedup keys: the
question's digest and LSH band keys.

The removals come back to the driver, which records them in the run's glan.db as the local
curate does. For dedup, the keys of the rows that stay are grouped by value across the cluster
(the way NeMo Curator buckets its LSH bands); only the rows in a group of two or more, the few
that share a key with another, come back to the driver with their keys, where ``Deduper`` judges
them in id order, exactly as the local curate does (see ``Deduper``: no other row can be a
duplicate or have one). Memory per actor holds one task's rows (a part: about 10,000 pairs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from glan.curation.dedup import Deduper, DedupKeys
from glan.curation.errors import CurationError, require
from glan.curation.screen import Screener, row_item

if TYPE_CHECKING:
    from glan.curation.config import CurateConfig
    from glan.curation.decontaminate import BenchmarkIndex
    from glan.run import Run

Found = dict[str, Any]
_RANGE = 10_000  # rows of a local run per task
_CHUNK = 512  # rows screened at a time in an actor (its dedup keys computed together)
_TASK_CPUS = 0.25  # the light tasks around the actors (grouping, picking rows)


def _schema(bands: int) -> pa.Schema:
    return pa.schema(
        [
            ("seq", pa.int64()),
            ("id", pa.string()),
            ("reason", pa.string()),  # null: the row stays (as far as screening goes)
            ("found", pa.string()),  # what the check found, as JSON
            ("digest", pa.uint64()),
            ("bands", pa.list_(pa.uint64(), max(1, bands))),  # without near dedup: one 0
            ("banded", pa.bool_()),
        ]
    )


class RayScreening:
    """What the actors found, materialised in the object store; read from the driver."""

    def __init__(self, screened: Any, bands: int) -> None:
        self.screened = screened
        self.bands = bands

    @property
    def seen(self) -> int:
        return int(self.screened.count())

    def removals(self) -> Iterator[tuple[int, str, str, Found]]:
        """(seq, id, reason, found) of every row screening or the review removes."""
        removed = self.screened.map_batches(
            _removed, batch_format="pyarrow", num_cpus=_TASK_CPUS, zero_copy_batch=True
        )
        for batch in removed.iter_batches(batch_format="pyarrow"):
            for row in batch.to_pylist():
                yield row["seq"], row["id"], row["reason"], json.loads(row["found"])

    def colliding(self, deduper: Deduper) -> None:
        """Give ``deduper`` the rows that share a dedup key with another row, with their keys:
        the keys of every row that stays, grouped by value on the cluster."""
        entries = self.screened.map_batches(
            _entries, batch_format="pyarrow", num_cpus=_TASK_CPUS, zero_copy_batch=True
        )
        shared = entries.groupby("key").map_groups(
            _shared, batch_format="pyarrow", num_cpus=_TASK_CPUS
        )
        found = [
            np.asarray(batch.column("seq").to_numpy(zero_copy_only=False), dtype=np.int64)
            for batch in shared.iter_batches(batch_format="pyarrow")
        ]
        seqs = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
        if not seqs.size:
            return
        picked = self.screened.map_batches(
            _picked,
            batch_format="pyarrow",
            num_cpus=_TASK_CPUS,
            fn_kwargs={"seqs": seqs},
            zero_copy_batch=True,
        )
        for batch in picked.iter_batches(batch_format="pyarrow"):
            if not batch.num_rows:
                continue
            bands = batch.column("bands").combine_chunks().flatten().to_numpy()
            bands = bands.reshape(batch.num_rows, -1)[:, : self.bands]
            deduper.add(
                batch.column("seq").to_pylist(),
                DedupKeys(
                    batch.column("digest").to_numpy(),
                    bands.astype(np.uint64),
                    batch.column("banded").to_numpy(zero_copy_only=False),
                ),
            )


def screen_on_ray(
    run: Run,
    through: int,
    config: CurateConfig,
    screener: Screener,
    reviewed: dict[str, tuple[str, Found]],
) -> RayScreening:
    """Screen the rows up to ``through`` on Ray: ``reviewed`` holds the review's removals (by
    row id), applied to the rows screening keeps, as the local curate applies them."""
    require("ray.data", "ray")
    import ray.data
    from ray.data import ActorPoolStrategy

    _start_ray(config.ray_address)
    tasks = _tasks(run, through)
    bands = screener.near.bands if screener.near is not None else 0
    if not tasks:
        return RayScreening(ray.data.from_arrow(_schema(bands).empty_table()), bands)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, min(config.workers or cpus, len(tasks)))
    screened = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        ScreenRows,
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=1,
        fn_constructor_kwargs={
            "config": config.model_dump(mode="json"),
            "lsh": screener.lsh,
            "benchmarks": screener.benchmarks,
            "reviewed": reviewed,
            "reader": run.reader(),
            "location": getattr(run, "where", None) if run.reader() is None else None,
        },
    )
    return RayScreening(screened.materialize(), bands)


def _tasks(run: Run, through: int) -> list[dict[str, Any]]:
    """One task per part of a Ray run (its rows' ids and numbers), or per range of a local
    run's rows."""
    if run.reader() is not None:
        return [
            {"part": "", "ids": "", "first": first, "last": min(first + _RANGE - 1, through)}
            for first in range(1, through + 1, _RANGE)
        ]
    from glan.run.parts import ROWS
    from glan.run.ray_run import RayRun

    assert isinstance(run, RayRun)
    tasks = []
    for ordinal, name in run.index.parts():
        seqs = [(i, s) for i, s in run.index.seqs_of_part(ordinal).items() if s <= through]
        if seqs:
            path = run.location.path(ROWS, name)
            tasks.append({"part": path, "ids": json.dumps(seqs), "first": 0, "last": 0})
    return tasks


class ScreenRows:
    """An actor of the screening pool: a task's rows in, a row of verdict and keys per row out."""

    def __init__(
        self,
        config: dict[str, Any],
        lsh: tuple[int, int] | None,
        benchmarks: BenchmarkIndex | None,
        reviewed: dict[str, tuple[str, Found]],
        reader: Any,
        location: str | None,
    ) -> None:
        self.screener = Screener(SimpleNamespace(**config), lsh, benchmarks=benchmarks)
        self.bands = self.screener.near.bands if self.screener.near is not None else 0
        self.reviewed = reviewed
        self.reader = reader
        self.location: Any = None
        if location is not None:
            from glan.run.parts import RunLocation

            self.location = RunLocation.of(location)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self._screen(items) for task in batch.to_pylist() for items in self._items(task)]
        return pa.concat_tables(tables) if tables else _schema(self.bands).empty_table()

    def _items(self, task: dict[str, Any]) -> Iterator[list[tuple[Any, ...]]]:
        """The task's rows as screening items, a chunk at a time."""
        if not task["part"]:
            for first in range(task["first"], task["last"] + 1, _CHUNK):
                rows = self.reader.rows(first, min(first + _CHUNK - 1, task["last"]))
                yield [row_item(seq, row) for seq, row in rows]
            return
        seqs = dict(json.loads(task["ids"]))
        items: list[tuple[Any, ...]] = []
        for part in self.location.read_part(task["part"], strict=True):
            for row in part.to_pylist():
                seq = seqs.pop(row["id"], None)  # None: a repeat, or a row after ``through``
                if seq is not None:
                    items.append(row_item(seq, row))
                    if len(items) >= _CHUNK:
                        yield items
                        items = []
        if items:
            yield items
        if seqs:
            from glan.run.parts import RunFilesError

            raise RunFilesError(
                f"{task['part']} no longer holds the rows it held; remove the run's"
                " rows-index.db and run the command again"
            )

    def _screen(self, items: list[tuple[Any, ...]]) -> pa.Table:
        rows, screened = self.screener.screen_task(items, None)
        count = len(rows)
        reasons: list[str | None] = [None] * count
        found: list[str | None] = [None] * count
        for i, reason, what in screened.verdicts:
            reasons[i], found[i] = reason, json.dumps(what)
        digests = np.zeros(count, dtype=np.uint64)
        width = max(1, self.bands)
        bands = np.zeros((count, width), dtype=np.uint64)
        banded = np.zeros(count, dtype=bool)
        staying = [i for i in range(count) if reasons[i] is None]
        if screened.keys is not None:
            digests[staying] = screened.keys.digests
            bands[staying, : self.bands] = screened.keys.bands
            banded[staying] = screened.keys.banded
        for i in staying:
            verdict = self.reviewed.get(rows[i][1])
            if verdict is not None:
                reasons[i], found[i] = verdict[0], json.dumps(verdict[1])
        return pa.table(
            [
                pa.array([seq for seq, _ in rows], pa.int64()),
                pa.array([row_id for _, row_id in rows], pa.string()),
                pa.array(reasons, pa.string()),
                pa.array(found, pa.string()),
                pa.array(digests, pa.uint64()),
                pa.FixedSizeListArray.from_arrays(pa.array(bands.ravel(), pa.uint64()), width),
                pa.array(banded, pa.bool_()),
            ],
            schema=_schema(self.bands),
        )


def _removed(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_valid(batch.column("reason"))).select(
        ["seq", "id", "reason", "found"]
    )


def _entries(batch: pa.Table) -> pa.Table:
    """(key, seq) of every dedup key of the rows that stay: the digest, and the band keys of
    the rows that have bands."""
    import pyarrow.compute as pc

    staying = batch.filter(pc.is_null(batch.column("reason")))
    seqs = staying.column("seq").to_numpy()
    keys = [staying.column("digest").to_numpy()]
    owners = [seqs]
    banded = staying.filter(staying.column("banded"))
    width = banded.schema.field("bands").type.list_size
    if banded.num_rows and width:
        bands = banded.column("bands").combine_chunks().flatten().to_numpy()
        keys.append(bands)
        owners.append(np.repeat(banded.column("seq").to_numpy(), width))
    return pa.table(
        {
            "key": pa.array(np.concatenate(keys), pa.uint64()),
            "seq": pa.array(np.concatenate(owners), pa.int64()),
        }
    )


def _shared(group: pa.Table) -> pa.Table:
    """A group of equal keys, when it has more than one entry; else nothing."""
    return group if group.num_rows > 1 else group.slice(0, 0)


def _picked(batch: pa.Table, seqs: np.ndarray) -> pa.Table:
    """The rows numbered in ``seqs`` (sorted), with their keys."""
    wanted = np.isin(batch.column("seq").to_numpy(), seqs, assume_unique=False)
    return batch.filter(pa.array(wanted)).select(["seq", "digest", "bands", "banded"])


def _start_ray(address: str | None) -> None:
    from glan.config import ConfigError
    from glan.engine.ray.connect import start_ray

    try:
        start_ray(address)
    except ConfigError as error:
        raise CurationError(f"{error}; or curate on this machine with --engine local") from None
