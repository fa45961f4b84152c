"""Exact and near-duplicate questions, in memory that stays small at millions of rows.

Rows are offered one at a time, in the order the caller chooses (curation uses id order); a row is
a duplicate when it matches one that was offered earlier *and kept*, so the first of every group is
the one that stays.

Exact duplicates compare normalised text (case, width, punctuation and spacing ignored).
Near duplicates are found with MinHash LSH: each question's MinHash over character shingles,
cut into the bands (b x r) chosen for the Jaccard threshold; a candidate that shares a band is then
checked against its real shingle Jaccard, so only pairs at or above the threshold are removed (LSH
decides what is compared, never what is removed).

The MinHash signatures and band keys are ``minhash.py``'s: numpy over many questions at once,
datasketch's values bit for bit.

Memory: datasketch's own in-memory LSH keeps a Python set per bucket, about 3.5 KB per row with 9
bands (measured: 770 MB for 200k rows), which is gigabytes at a million rows. Here every row's
keys are kept in numpy arrays by row number (``Deduper``: 121 bytes a row), and only the rows
that share a key with another (16% of the realistic benchmark's) enter the bucket index, which
keeps each (band key, row) entry in sorted numpy arrays, 16 bytes each. The texts stay in the
store: a candidate's text is read back only to check its Jaccard (the shingles of the last
50,000 kept rows are kept for that).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from glan.curation.minhash import BATCH_DOCS, MinHasher, jaccard, numpy

if TYPE_CHECKING:
    import numpy as np

# A row's text by its key (out_seq), normalised; the texts stay in the store.
TextOf = Callable[[int], str]

_BUFFER = 1 << 14  # entries waiting in a dict before they become a sorted run
_RATIO = 4  # a run is merged into the one before it while that one is at most 4x bigger
# A pathological bucket (thousands of similar-but-not-near templates) must not make every new
# row compare itself with all of them: check the candidates that share the most bands first.
_MAX_CANDIDATES = 32
# Shingles of the kept rows added last, kept to compare with (about 1.5 kB each): a candidate
# not among them is read back from the store
_KEPT_SHINGLES = 50_000
# Keys sorted at once when finding those that repeat: 2^22 (with their rows, 64 MB)
_SORT_BITS = 22


class HashIndex:
    """A multimap from 64-bit keys to row keys, 16 bytes per entry (a Python dict of lists costs
    about 170).

    A log-structured merge: new entries wait in a small dict; every ``_BUFFER`` of them become a
    sorted run of numpy arrays, and a run is merged into the one before it while that one is at
    most ``_RATIO`` times bigger. So there are a handful of runs (about log4 of n / 16k), each
    entry is copied a few times over a whole curation, and a lookup is one binary search per run.
    """

    def __init__(self) -> None:
        np = numpy()
        self._np = np
        self._runs: list[tuple[Any, Any]] = []  # (sorted keys, values), oldest and biggest first
        self._pending: dict[int, list[int]] = {}
        self._pending_count = 0
        self._size = 0
        # the values of the keys looked up ahead (``prefetch``), kept up to date by ``add``
        self._ahead: dict[int, list[int]] | None = None

    def __len__(self) -> int:
        return self._size

    def get(self, key: int) -> list[int]:
        """Every value added under ``key``, oldest first."""
        return self.get_many([key])[0]

    def prefetch(self, keys: list[int]) -> None:
        """Look these keys up now, all at once; ``get`` of them is then a dict lookup, until
        ``end_prefetch`` (values added meanwhile are kept with them)."""
        self._ahead = None
        self._ahead = dict(zip(keys, self.get_many(keys), strict=True))

    def end_prefetch(self) -> None:
        self._ahead = None

    def get_many(self, keys: list[int]) -> list[list[int]]:
        """``get`` for several keys at once: one vectorised search per run."""
        if self._ahead is not None:
            try:
                return [self._ahead[key] for key in keys]
            except KeyError:  # not looked up ahead: look in the index itself
                pass
        np = self._np
        found: list[list[int]] = [[] for _ in keys]
        if self._runs:
            targets = np.array(keys, dtype=np.uint64)
            for run_keys, run_values in self._runs:
                low = np.searchsorted(run_keys, targets, side="left")
                present = run_keys[np.minimum(low, run_keys.size - 1)] == targets
                for i in np.flatnonzero(present).tolist():
                    high = int(np.searchsorted(run_keys, targets[i], side="right"))
                    found[i].extend(run_values[low[i] : high].tolist())
        for i, key in enumerate(keys):
            pending = self._pending.get(key)
            if pending:
                found[i].extend(pending)
        return found

    def add(self, key: int, value: int) -> None:
        self.add_many([key], value)

    def add_many(self, keys: list[int], value: int) -> None:
        """``add(key, value)`` for each of the keys."""
        pending = self._pending
        for key in keys:
            found = pending.get(key)
            if found is None:
                pending[key] = [value]
            else:
                found.append(value)
        if self._ahead is not None:
            for key in keys:
                ahead = self._ahead.get(key)
                if ahead is not None:
                    ahead.append(value)
        self._pending_count += len(keys)
        self._size += len(keys)
        if self._pending_count >= _BUFFER:
            self._flush()

    def _flush(self) -> None:
        np = self._np
        count = self._pending_count
        keys = np.fromiter(
            (key for key, values in self._pending.items() for _ in values), np.uint64, count
        )
        values = np.fromiter(
            (value for values in self._pending.values() for value in values), np.int64, count
        )
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], values[order]))
        self._pending = {}
        self._pending_count = 0
        while len(self._runs) > 1 and self._runs[-2][0].size <= _RATIO * self._runs[-1][0].size:
            newer_keys, newer_values = self._runs.pop()
            older_keys, older_values = self._runs.pop()
            # after equal keys already there, so values stay oldest first
            at = np.searchsorted(older_keys, newer_keys, side="right")
            self._runs.append(
                (np.insert(older_keys, at, newer_keys), np.insert(older_values, at, newer_values))
            )


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class ExactDuplicates:
    """Questions whose normalised text equals that of a kept one."""

    def __init__(self, text_of: TextOf) -> None:
        self._text_of = text_of
        self._index = HashIndex()

    def match(self, text: str) -> int | None:
        """The key of the kept row with this normalised text, if any."""
        for key in self._index.get(_digest(text)):
            if self._text_of(key) == text:  # rule out a (very unlikely) 64-bit collision
                return key
        return None

    def add(self, text: str, key: int) -> None:
        self._index.add(_digest(text), key)

    def prefetch(self, texts: list[str]) -> None:
        """Look these texts up ahead, at once (see ``HashIndex.prefetch``)."""
        self._index.prefetch([_digest(text) for text in texts])

    def end_prefetch(self) -> None:
        self._index.end_prefetch()


@dataclass(frozen=True)
class Probe:
    """One question's shingles and LSH band keys, computed once for matching and adding."""

    shingles: np.ndarray
    bands: list[int]


@dataclass(frozen=True)
class NearMatch:
    key: int
    jaccard: float


class NearDuplicates(MinHasher):
    """Questions whose character-shingle Jaccard with a kept one is at least ``threshold``: the
    MinHasher's band keys find the candidates, their real Jaccard decides."""

    def __init__(
        self,
        *,
        threshold: float,
        shingle: int,
        num_perm: int,
        text_of: TextOf,
        params: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(threshold=threshold, shingle=shingle, num_perm=num_perm, params=params)
        self._text_of = text_of
        self._index = HashIndex()
        self._kept: dict[int, np.ndarray] = {}

    def probe(self, text: str) -> Probe:
        return self.probe_many([text])[0]

    def probe_many(self, texts: list[str]) -> list[Probe]:
        """The probes of many normalised texts at once (numpy over a batch of them)."""
        probes: list[Probe] = []
        for start in range(0, len(texts), BATCH_DOCS):
            probes += self._probe_batch(texts[start : start + BATCH_DOCS])
        return probes

    def _probe_batch(self, texts: list[str]) -> list[Probe]:
        shingles = self.shingles_many(texts)
        keys, banded = self._band_keys(shingles)
        return [
            Probe(s, bands if has else [])
            for s, bands, has in zip(shingles, keys.tolist(), banded.tolist(), strict=True)
        ]

    def match(self, probe: Probe) -> NearMatch | None:
        """The kept row most similar to the probe, if its Jaccard reaches the threshold."""
        shared: Counter[int] = Counter()
        for keys in self._index.get_many(probe.bands):
            if keys:
                shared.update(set(keys))
        best: NearMatch | None = None
        for candidate, _ in shared.most_common(_MAX_CANDIDATES):
            other = self._kept.get(candidate)
            if other is None:
                other = self.shingles(self._text_of(candidate))
            similarity = jaccard(probe.shingles, other)
            if similarity >= self.threshold and (best is None or similarity > best.jaccard):
                best = NearMatch(candidate, similarity)
        return best

    def add(self, probe: Probe, key: int) -> None:
        self._index.add_many(probe.bands, key)
        if probe.bands:  # the latest kept rows' shingles, for when they are candidates
            self._kept[key] = probe.shingles
            if len(self._kept) > _KEPT_SHINGLES:
                del self._kept[next(iter(self._kept))]

    def prefetch(self, probes: list[Probe]) -> None:
        """Look the band keys of these probes up ahead, at once (see ``HashIndex.prefetch``)."""
        self._index.prefetch([key for probe in probes for key in probe.bands])

    def end_prefetch(self) -> None:
        self._index.end_prefetch()


@dataclass(frozen=True)
class DedupKeys:
    """What dedup needs of a batch of questions, computed where they are screened (in worker
    processes): each normalised question's digest (exact dedup) and LSH band keys (near)."""

    digests: np.ndarray  # (n,) uint64
    bands: np.ndarray  # (n, bands) uint64; (n, 0) without near dedup
    banded: np.ndarray  # (n,) bool: False for a question without shingles (an empty one)

    def __len__(self) -> int:
        return int(self.digests.size)

    def take(self, positions: list[int]) -> DedupKeys:
        """The keys of these rows of the batch."""
        return DedupKeys(self.digests[positions], self.bands[positions], self.banded[positions])


def dedup_keys(texts: list[str], near: NearDuplicates | None) -> DedupKeys:
    """The ``DedupKeys`` of normalised questions."""
    np = numpy()
    digests = np.fromiter((_digest(text) for text in texts), dtype=np.uint64, count=len(texts))
    if near is None:
        return DedupKeys(digests, np.zeros((len(texts), 0), np.uint64), np.zeros(len(texts), bool))
    return DedupKeys(digests, *near.band_keys(texts))


Verdict = tuple[str, dict[str, Any]]


class Deduper:
    """Exact, then near dedup of the rows that passed screening: a row is a duplicate of the
    most similar kept row before it in id order, and is kept (and compared with later rows)
    otherwise.

    Rows arrive in any order, with their ``DedupKeys`` (``add``), and are kept by row number at
    121 bytes a row (digest, 14 band keys, a state byte). ``colliding`` then picks, with a few
    sorts, the rows that share a digest or a band key with another: every other row has no
    candidate to compare with and nothing will ever compare with it, so it is kept, and leaving
    it out changes nothing for the rest. Only the colliding rows are judged one by one in id
    order (``judge_many``), with the keys the workers computed: the verdicts, candidates and
    their order are those of judging every row in id order.
    """

    def __init__(self, rows: int, near: NearDuplicates | None, text_of: TextOf) -> None:
        np = self._np = numpy()
        self.near = near
        self.exact = ExactDuplicates(text_of)
        bands = near.bands if near is not None else 0
        self._digests = np.zeros(rows + 1, dtype=np.uint64)  # by row number (seq)
        self._bands = np.zeros((rows + 1, bands), dtype=np.uint64)
        self._state = np.zeros(rows + 1, dtype=np.uint8)  # 0: absent, 1: present, 2: banded too

    def add(self, seqs: list[int], keys: DedupKeys) -> None:
        """Offer these rows (their numbers and keys) to dedup."""
        np = self._np
        at = np.asarray(seqs, dtype=np.int64)
        self._digests[at] = keys.digests
        self._bands[at] = keys.bands
        self._state[at] = 1 + keys.banded

    def colliding(self) -> np.ndarray:
        """The numbers of the rows that share a digest or a band key with another row, in order."""
        np = self._np
        present = np.flatnonzero(self._state)
        banded = np.flatnonzero(self._state == 2)
        columns = [(self._digests[present], present)]
        columns += [(self._bands[banded, band], banded) for band in range(self._bands.shape[1])]
        return np.flatnonzero(_sharing(np, columns, self._state.size))

    def keys_of(self, seqs: list[int]) -> list[list[int]]:
        """The band keys of these rows, as ``Probe.bands`` has them ([] for none)."""
        np = self._np
        at = np.asarray(seqs, dtype=np.int64)
        banded = (self._state[at] == 2).tolist()
        keys = self._bands[at].tolist()
        return [bands if has else [] for bands, has in zip(keys, banded, strict=True)]

    def judge_many(self, rows: list[tuple[int, str]]) -> list[Verdict | None]:
        """Why each of these rows (number, normalised question; next in id order) duplicates a
        kept one, or None (then it is kept, and later rows are compared with it)."""
        seqs = [seq for seq, _ in rows]
        texts = [text for _, text in rows]
        probes: list[Probe | None] = [None] * len(rows)
        if self.near is not None:
            shingles = self.near.shingles_many(texts)
            probes = [
                Probe(s, bands) for s, bands in zip(shingles, self.keys_of(seqs), strict=True)
            ]
            self.near.prefetch([p for p in probes if p is not None])
        self.exact.prefetch(texts)
        try:
            return [
                self._judge(seq, text, probe)
                for seq, text, probe in zip(seqs, texts, probes, strict=True)
            ]
        finally:
            if self.near is not None:
                self.near.end_prefetch()
            self.exact.end_prefetch()

    def _judge(self, seq: int, text: str, probe: Probe | None) -> Verdict | None:
        original = self.exact.match(text)
        if original is not None:
            return "exact_duplicate", {"duplicate_of": original}
        if self.near is not None and probe is not None:
            similar = self.near.match(probe)
            if similar is not None:
                return "near_duplicate", {
                    "duplicate_of": similar.key,
                    "jaccard": round(similar.jaccard, 3),
                }
            self.near.add(probe, seq)
        self.exact.add(text, seq)
        return None


def _sharing(np: Any, columns: list[tuple[Any, Any]], rows: int) -> Any:
    """For each row, whether one of its values (``columns``: values and the row each belongs to)
    equals another value of any column. Sorted a part at a time (by the values' top bits), so
    the extra memory stays near 4M entries whatever the number of rows."""
    total = sum(values.size for values, _ in columns)
    found = np.zeros(rows, dtype=bool)
    bits = max(0, (total - 1).bit_length() - _SORT_BITS)
    for part in range(1 << bits):
        values, owners = [], []
        for column, owner in columns:
            if bits:
                chosen = np.flatnonzero((column >> np.uint64(64 - bits)) == part)
                column, owner = column[chosen], owner[chosen]
            values.append(column)
            owners.append(owner)
        value = np.concatenate(values)
        owner = np.concatenate(owners)
        order = np.argsort(value)
        value = value[order]
        same = value[1:] == value[:-1]
        shared = np.zeros(value.size, dtype=bool)
        shared[1:] |= same
        shared[:-1] |= same
        found[owner[order[shared]]] = True
    return found
