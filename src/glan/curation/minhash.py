"""MinHash over character shingles, and its LSH bands, with numpy for many texts at once.

The same values as datasketch's affine32 scheme (MurmurHash3's finalizer, then ``a * h + b``
modulo 2^32, then the minimum per permutation), bit for bit, without a Python call per text. The
permutations and the bands are datasketch's too (``minhash_permutations``, ``lsh_params``: the
same draws and the same choice, computed without importing datasketch, which costs a second for
scipy; a test compares them with datasketch's).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from glan.curation.errors import CurationError, require

if TYPE_CHECKING:
    import numpy as np

SEED = 1  # of the permutations and mixes: the same run gives the same signatures every time
# Texts whose shingles and signatures are computed together (numpy over all of them).
BATCH_DOCS = 256
# (false positive, false negative) weights of the LSH bands' choice: see MinHasher
LSH_WEIGHTS = (0.1, 0.9)


class MinHasher:
    """Shingles, MinHash signatures and LSH band keys of normalised texts.

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
        params: tuple[int, int] | None = None,
    ) -> None:
        self.threshold = threshold
        self.shingle = shingle
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
        np = self._np = numpy()
        self._perm_a, self._perm_b = minhash_permutations(num_perm, SEED)
        rng = np.random.default_rng(SEED)
        # random odd 64-bit multipliers: multilinear hashing of shingles and of bands
        self._shingle_mix = rng.integers(1, 2**63, size=shingle, dtype=np.uint64) * 2 + 1
        self._band_mix = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) * 2 + 1
        # one index for all bands: a salt per band keeps equal values in two bands apart
        self._band_salt = rng.integers(0, 2**63, size=self.bands, dtype=np.uint64)

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
        for start in range(0, len(texts), BATCH_DOCS):
            batch = texts[start : start + BATCH_DOCS]
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


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations (``MinHash(num_perm, seed).permutations``): odd
    multipliers ``a`` and offsets ``b``, drawn from numpy's legacy RandomState in its order."""
    np = numpy()
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
    np = numpy()
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
    np = numpy()
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


def numpy() -> Any:
    # imported when dedup runs, so the CLI starts (and generate works) without the curate extra
    return require("numpy", "curate")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 and b.size == 0:
        return 1.0
    common = numpy().intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)
