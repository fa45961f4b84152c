"""Exact and near-duplicate questions, in memory that stays small at millions of rows.

Rows are offered one at a time, in the order the caller chooses (curation uses id order); a row is
a duplicate when it matches one that was offered earlier *and kept*, so the first of every group is
the one that stays.

Exact duplicates compare normalised text (case, width, punctuation and spacing ignored).
Near duplicates are found with MinHash LSH: each question's MinHash over character shingles,
cut into the bands (b x r) chosen for the Jaccard threshold; a candidate that shares a band is then
checked against its real shingle Jaccard, so only pairs at or above the threshold are removed (LSH
decides what is compared, never what is removed).

Signatures are computed here with numpy, many questions at a time (``probe_many``): the same
values as datasketch's affine32 scheme (MurmurHash3's finalizer, then ``a * h + b`` modulo 2^32,
then the minimum per permutation), bit for bit, without a Python call per question. The
permutations and the bands are datasketch's too (``minhash_permutations``, ``lsh_params``: the same
draws and the same choice, computed without importing datasketch, which costs a second for scipy;
a test compares them with datasketch's).

Memory: datasketch's own in-memory LSH keeps a Python set per bucket, about 3.5 KB per row with 9
bands (measured: 770 MB for 200k rows), which is gigabytes at a million rows. Here every row's
keys are kept in numpy arrays by row number (``Deduper``: 121 bytes a row), and only the rows
that share a key with another (16% of the realistic benchmark's) enter the bucket index, which
keeps each (band key, row) entry in sorted numpy arrays, 16 bytes each. The texts stay in the
store: a candidate's text is read back only to check its Jaccard (the shingles of the last
50,000 kept rows are kept for that).
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from glan.curation.errors import CurationError, require

if TYPE_CHECKING:
    import numpy as np

# A row's text by its key (out_seq), normalised; the texts stay in the store.
TextOf = Callable[[int], str]

_SEED = 1  # of the MinHash permutations: the same run gives the same signatures every time
_BUFFER = 1 << 14  # entries waiting in a dict before they become a sorted run
_RATIO = 4  # a run is merged into the one before it while that one is at most 4x bigger
# A pathological bucket (thousands of similar-but-not-near templates) must not make every new
# row compare itself with all of them: check the candidates that share the most bands first.
_MAX_CANDIDATES = 32
# Texts whose shingles and signatures are computed together (numpy over all of them).
_BATCH_DOCS = 256
# Shingles of the kept rows added last, kept to compare with (about 1.5 kB each): a candidate
# not among them is read back from the store
_KEPT_SHINGLES = 50_000
# Keys sorted at once when finding those that repeat: 2^22 (with their rows, 64 MB)
_SORT_BITS = 22
# (false positive, false negative) weights of the LSH bands' choice: see NearDuplicates
LSH_WEIGHTS = (0.1, 0.9)


class HashIndex:
    """A multimap from 64-bit keys to row keys, 16 bytes per entry (a Python dict of lists costs
    about 170).

    A log-structured merge: new entries wait in a small dict; every ``_BUFFER`` of them become a
    sorted run of numpy arrays, and a run is merged into the one before it while that one is at
    most ``_RATIO`` times bigger. So there are a handful of runs (about log4 of n / 16k), each
    entry is copied a few times over a whole curation, and a lookup is one binary search per run.
    """

    def __init__(self) -> None:
        np = _numpy()
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


class NearDuplicates:
    """Questions whose character-shingle Jaccard with a kept one is at least ``threshold``.

    Shingles are characters, not words: questions are short (a one-word edit in a 30-word
    question leaves a 5-word-shingle Jaccard near 0.68, a 5-character one near 0.9) and languages
    written without spaces have no words to shingle.
    """

    def __init__(
        self,
        *,
        threshold: float,
        shingle: int,
        num_perm: int,
        text_of: TextOf,
        params: tuple[int, int] | None = None,
    ) -> None:
        self.threshold = threshold
        self.shingle = shingle
        self._text_of = text_of
        # Every candidate is verified, so a false positive costs one lookup while a false negative
        # is a duplicate kept: weight misses 9:1 (128 perms at 0.8: 14 bands of 9 rows, which
        # finds a pair at Jaccard 0.85 97% of the time; the balanced 9 x 13 finds it 69%).
        # ``params``: the (bands, rows) lsh_params gave, passed on to worker processes.
        self.bands, self.rows = params or lsh_params(threshold, num_perm, LSH_WEIGHTS)
        if self.bands < 2:
            raise CurationError(
                f"--near-dup-threshold {threshold} with --num-perm {num_perm} leaves fewer than"
                " 2 LSH bands; lower the threshold or raise --num-perm"
            )
        np = self._np = _numpy()
        self._perm_a, self._perm_b = minhash_permutations(num_perm, _SEED)
        rng = np.random.default_rng(_SEED)
        # random odd 64-bit multipliers: multilinear hashing of shingles and of bands
        self._shingle_mix = rng.integers(1, 2**63, size=shingle, dtype=np.uint64) * 2 + 1
        self._band_mix = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) * 2 + 1
        # one index for all bands: a salt per band keeps equal values in two bands apart
        self._band_salt = rng.integers(0, 2**63, size=self.bands, dtype=np.uint64)
        self._index = HashIndex()
        self._kept: dict[int, np.ndarray] = {}

    def probe(self, text: str) -> Probe:
        return self.probe_many([text])[0]

    def probe_many(self, texts: list[str]) -> list[Probe]:
        """The probes of many normalised texts at once (numpy over a batch of them)."""
        probes: list[Probe] = []
        for start in range(0, len(texts), _BATCH_DOCS):
            probes += self._probe_batch(texts[start : start + _BATCH_DOCS])
        return probes

    def _probe_batch(self, texts: list[str]) -> list[Probe]:
        shingles = self.shingles_many(texts)
        keys, banded = self._band_keys(shingles)
        return [
            Probe(s, bands if has else [])
            for s, bands, has in zip(shingles, keys.tolist(), banded.tolist(), strict=True)
        ]

    def band_keys(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The LSH band keys of many normalised texts, (texts, bands) uint64, and whether each
        text has any (an empty text has no shingles, so no bands: its row of keys is 0).

        The same keys as the probes', faster: a minimum does not care about repeats, so the
        shingle hashes of each text need not be made a set (no sort), and every window of the
        texts laid end to end is hashed by whole-array slices (no gathering); the windows that
        run from one text into the next take their text's first hash, which changes no minimum.
        """
        np = self._np
        keys = np.zeros((len(texts), self.bands), dtype=np.uint64)
        banded = np.zeros(len(texts), dtype=bool)
        for start in range(0, len(texts), _BATCH_DOCS):
            batch = texts[start : start + _BATCH_DOCS]
            width = self.shingle
            whole = [i for i, text in enumerate(batch) if len(text) >= width]
            short = [i for i, text in enumerate(batch) if 0 < len(text) < width]
            if whole:
                found = self._keys_of(self._window_signatures([batch[i] for i in whole]))
                keys[start + np.asarray(whole)] = found
            if short:  # one shingle, the whole text
                shingles = [self.shingles(batch[i]) for i in short]
                keys[start + np.asarray(short)] = self._keys_of(self._signatures(shingles))
            banded[start : start + len(batch)] = [len(text) > 0 for text in batch]
        return keys, banded

    def _window_signatures(self, texts: list[str]) -> np.ndarray:
        """The signatures of texts at least a shingle long, from their windows' hashes."""
        np = self._np
        width = self.shingle
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        firsts = np.cumsum(lengths) - lengths  # each text's first character
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        total = codes.size
        codes = np.concatenate([codes.astype(np.uint64), np.zeros(width, dtype=np.uint64)])
        mixed = codes[:total] * self._shingle_mix[0]
        for offset in range(1, width):
            mixed += codes[offset : offset + total] * self._shingle_mix[offset]
        hashes = (mixed >> np.uint64(32)).astype(np.uint32)
        if width > 1:  # the last width - 1 windows of each text run into the next one
            across = np.repeat(firsts + lengths - width + 1, width - 1)
            across += np.tile(np.arange(width - 1, dtype=np.int64), len(texts))
            hashes[across] = np.repeat(hashes[firsts], width - 1)
        return self._minima(_fmix32(np, hashes), firsts)

    def _band_keys(self, shingles: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        np = self._np
        keys = np.zeros((len(shingles), self.bands), dtype=np.uint64)
        banded = np.fromiter((s.size > 0 for s in shingles), dtype=bool, count=len(shingles))
        full = np.flatnonzero(banded)
        if full.size:
            keys[full] = self._keys_of(self._signatures([shingles[i] for i in full.tolist()]))
        return keys, banded

    def _keys_of(self, signatures: np.ndarray) -> np.ndarray:
        """Band keys of signatures: each band's rows hashed together, salted by band."""
        np = self._np
        used = signatures[:, : self.bands * self.rows].astype(np.uint64)
        keys = (used.reshape(len(used), self.bands, self.rows) * self._band_mix).sum(axis=2)
        keys += self._band_salt
        return keys

    def _signatures(self, docs: list[np.ndarray]) -> np.ndarray:
        """datasketch's affine32 MinHash signature of each (non-empty) set of 32-bit hashes."""
        np = self._np
        starts = np.zeros(len(docs), dtype=np.int64)
        np.cumsum([d.size for d in docs[:-1]], out=starts[1:])
        return self._minima(_fmix32(np, np.concatenate(docs)), starts)

    def _minima(self, flat: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The signature of each run of pre-mixed hashes (``flat`` from each of ``starts`` to
        the next), for the permutations the bands use (the rest would be thrown away).

        One permutation at a time over every value of the batch (a vector that stays in cache),
        the minimum per text by ``reduceat``: faster than a (permutations x values) matrix.
        """
        np = self._np
        used = self.bands * self.rows
        signatures = np.empty((starts.size, used), dtype=np.uint32)
        permuted = np.empty_like(flat)
        for p, (a, b) in enumerate(zip(self._perm_a[:used], self._perm_b[:used], strict=True)):
            np.multiply(flat, a, out=permuted)  # wraps modulo 2^32, as datasketch's does
            permuted += b
            signatures[:, p] = np.minimum.reduceat(permuted, starts)
        return signatures

    def shingles_many(self, texts: list[str]) -> list[np.ndarray]:
        """``shingles`` of each text, for all of them in a few whole-array operations."""
        np = self._np
        width = self.shingle
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        short = lengths < width  # empty, or one shingle shorter than ``width``: one at a time
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        codes = np.concatenate([codes.astype(np.uint64), np.zeros(width, dtype=np.uint64)])
        ends = np.cumsum(lengths)
        counts = np.where(short, 0, lengths - width + 1)
        total = int(counts.sum())
        out: list[Any] = [None] * len(texts)
        if total:
            doc = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
            # each shingle's first character: its text's start plus its place in the text
            first = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            first += np.repeat(ends - lengths, counts)
            mixed = codes[first] * self._shingle_mix[0]
            for offset in range(1, width):
                mixed += codes[first + offset] * self._shingle_mix[offset]
            # sort by (text, hash) at once, the text in the high 32 bits, and drop repeats
            keyed = np.sort((doc.astype(np.uint64) << np.uint64(32)) | (mixed >> np.uint64(32)))
            keyed = keyed[np.concatenate(([True], keyed[1:] != keyed[:-1]))]
            owner = (keyed >> np.uint64(32)).astype(np.int64)
            hashes = keyed.astype(np.uint32)
            bounds = np.searchsorted(owner, np.arange(len(texts) + 1))
            for i in np.flatnonzero(~short).tolist():
                out[i] = hashes[bounds[i] : bounds[i + 1]]
        for i in np.flatnonzero(short).tolist():
            out[i] = self.shingles(texts[i])
        return out

    def shingles(self, text: str) -> np.ndarray:
        """The distinct 32-bit hashes of a normalised text's character shingles."""
        np = self._np
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if codes.size == 0:
            return np.empty(0, dtype=np.uint32)
        width = min(self.shingle, codes.size)  # a text shorter than a shingle is one shingle
        count = codes.size - width + 1
        mixed = codes[:count] * self._shingle_mix[0]
        for offset in range(1, width):  # a few whole-array operations beat a window view
            mixed += codes[offset : offset + count] * self._shingle_mix[offset]
        return np.unique((mixed >> np.uint64(32)).astype(np.uint32))

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
            jaccard = _jaccard(probe.shingles, other)
            if jaccard >= self.threshold and (best is None or jaccard > best.jaccard):
                best = NearMatch(candidate, jaccard)
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
    np = _numpy()
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
        np = self._np = _numpy()
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


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations (``MinHash(num_perm, seed).permutations``): odd
    multipliers ``a`` and offsets ``b``, drawn from numpy's legacy RandomState in its order."""
    np = _numpy()
    draw = np.random.RandomState(seed)
    a = draw.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = draw.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@functools.lru_cache(maxsize=16)
def lsh_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = LSH_WEIGHTS
) -> tuple[int, int]:
    """The bands and rows datasketch's ``MinHashLSH(threshold, num_perm, weights)`` chooses: of
    every b x r <= num_perm, the first (by b, then r) with the least weighted sum of the chances
    of a false positive (a pair below the threshold shares a band) and a false negative.

    datasketch integrates those chances with scipy's ``quad``; they are polynomials in the
    Jaccard similarity s (``1 - (1 - s^r)^b``), integrated here by Gauss-Legendre rules on 64
    pieces of each interval, to within rounding: the same choice wherever two candidates do not
    tie to within the integrals' error (a test checks a grid of thresholds and sizes).
    """
    np = _numpy()
    below, below_w = _quadrature(0.0, threshold)
    above, above_w = _quadrature(threshold, 1.0)
    false_positive_weight, false_negative_weight = weights
    best, chosen = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1, dtype=np.float64)[:, None]
        false_positive = (1 - (1 - below**r) ** b) @ below_w
        false_negative = ((1 - above**r) ** b) @ above_w
        errors = false_positive * false_positive_weight + false_negative * false_negative_weight
        i = int(np.argmin(errors))  # the first of equal ones, as datasketch's strict "<"
        if errors[i] < best:
            best, chosen = float(errors[i]), (b, i + 1)
    return chosen


def _quadrature(start: float, end: float, pieces: int = 64, order: int = 16) -> tuple[Any, Any]:
    """Nodes and weights of a composite Gauss-Legendre rule on [start, end]."""
    np = _numpy()
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(start, end, pieces + 1)
    half = (edges[1:] - edges[:-1]) / 2
    middle = (edges[1:] + edges[:-1]) / 2
    return (middle[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def _fmix32(np: Any, h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix for affine32), element-wise."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _numpy() -> Any:
    # imported when dedup runs, so the CLI starts (and generate works) without the curate extra
    return require("numpy", "curate")


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 and b.size == 0:
        return 1.0
    common = _numpy().intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)
