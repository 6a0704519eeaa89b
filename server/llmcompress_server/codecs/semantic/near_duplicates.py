"""Near-duplicate detection for BatchCompress: MinHash over word shingles, banded LSH, exact check.

Similarity is the Jaccard index of two texts' sets of word 3-shingles
(lowercased `\\w+` words). Texts that differ in a ticket number, a name or a
date share almost all their shingles (one changed word in a 150-word passage
changes 3 of its 148 shingles: J = 145/151 = 0.96), while different texts
share few, even on one topic (the 13,366 pairs of the 164 corpus passages,
from three Canterbury corpus texts: at most 0.041). Near-duplicates in our users'
batches are exactly that kind of edit (templated tickets, repeated chat
preambles, re-sent memories), so set overlap of word sequences is the right
notion, and it costs O(words) per text with no model.

Scaling: each text gets a MinHash signature (`PERMUTATIONS` hashes; the
chance that two signatures agree in one position is their Jaccard index). The
signature is cut into `bands` of `rows`; texts sharing any band's hash are
candidates. This finds the pairs above the threshold in O(n) bucket lookups
instead of the O(n^2) comparisons (or n^2 embeddings) of the seed's greedy
pass. Bands and rows are chosen per threshold so that a pair at the
threshold is a candidate with probability >= 0.99 (`lsh_shape`). A
candidate is then checked exactly (the two shingle sets' Jaccard), so the
grouping never rests on an estimate: false candidates cost one set
intersection, and a miss leaves an item ungrouped (it compresses on its own).
Embeddings would also catch paraphrases, but a paraphrase cannot share a
summary safely and costs a model pass per item, which is what grouping saves.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

SHINGLE_WORDS = 3
PERMUTATIONS = 128
# A pair at the threshold must become a candidate at least this often.
RECALL_AT_THRESHOLD = 0.99
K = TypeVar("K", bound=Hashable)
_WORD = re.compile(r"\w+")
# Multiply-add-shift hashing of 32-bit keys: random 64-bit a (odd) and b, and the high
# 32 bits of (a * h + b) mod 2**64; a fixed seed, so signatures are the same in every run.
_SEEDS = np.random.default_rng(20260517).integers(
    0, 2**64, size=(2, PERMUTATIONS), dtype=np.uint64, endpoint=False
)
_A = _SEEDS[0] | np.uint64(1)
_B = _SEEDS[1]
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: distinct word orders give distinct shingles


def shingles(text: str) -> frozenset[int]:
    """The text's word 3-shingles as 32-bit hashes (the whole word list when shorter)."""
    words = _WORD.findall(text.lower())
    hashed = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), np.uint64, len(words))
    n = min(SHINGLE_WORDS, len(words))
    if n == 0:
        return frozenset()
    # A shingle's hash mixes its words' hashes in order (an odd multiplier, mod 2**64);
    # the high half is kept, so every word, the last one too, is multiplied in.
    mixed = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            mixed = (mixed + hashed[i : len(hashed) - n + 1 + i]) * _MIX
    return frozenset((mixed >> np.uint64(32)).tolist())


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def signature(hashes: frozenset[int]) -> npt.NDArray[np.uint64]:
    """MinHash signature: per hash function, the least value over the shingles."""
    if not hashes:
        return np.zeros(PERMUTATIONS, dtype=np.uint64)
    h = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
    with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
        mixed = (h[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)
    out: npt.NDArray[np.uint64] = mixed.min(axis=0)
    return out


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that two texts of this Jaccard index share at least one band."""
    return float(1.0 - (1.0 - similarity**rows) ** bands)


def lsh_shape(threshold: float, permutations: int = PERMUTATIONS) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= permutations: the most rows per band (fewest false
    candidates) that still make a pair at `threshold` a candidate with probability
    >= RECALL_AT_THRESHOLD."""
    for rows in range(permutations, 0, -1):
        bands = permutations // rows
        if candidate_probability(threshold, bands, rows) >= RECALL_AT_THRESHOLD:
            return bands, rows
    return permutations, 1


@dataclass
class _Member(Generic[K]):
    key: K
    hashes: frozenset[int]
    bands: list[bytes]


@dataclass
class NearDuplicateIndex(Generic[K]):
    """The last `capacity` group leaders of a stream, findable by near-duplicate text.

    `match(text)` returns (the best leader's key, its Jaccard index) when a leader
    reaches `threshold`, else None; `add(key, text)` makes a text a leader. The
    oldest leader drops out once `capacity` are held (the stream's window).
    """

    threshold: float
    capacity: int
    _members: OrderedDict[K, _Member[K]] = field(default_factory=OrderedDict)
    _buckets: dict[bytes, set[K]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        self.bands, self.rows = lsh_shape(self.threshold)

    def __len__(self) -> int:
        return len(self._members)

    def _band_keys(self, hashes: frozenset[int]) -> list[bytes]:
        sig = signature(hashes)
        rows = self.rows
        return [i.to_bytes(2, "big") + sig[i * rows : (i + 1) * rows].tobytes()
                for i in range(self.bands)]  # fmt: skip

    def match(self, text: str) -> tuple[K, float, frozenset[int]] | None:
        """The most similar leader at or above the threshold (the earliest on a tie)."""
        hashes = shingles(text)
        candidates: set[K] = set()
        for band in self._band_keys(hashes):
            candidates |= self._buckets.get(band, set())
        best: tuple[K, float] | None = None
        for key in self._members:  # in insertion order, so ties go to the earliest
            if key not in candidates:
                continue
            sim = jaccard(hashes, self._members[key].hashes)
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (key, sim)
        return None if best is None else (best[0], best[1], hashes)

    def add(self, key: K, text: str) -> list[K]:
        """Make `text` a leader; returns the keys of the leaders that dropped out for it."""
        hashes = shingles(text)
        member = _Member(key, hashes, self._band_keys(hashes))
        self._members[key] = member
        for band in member.bands:
            self._buckets.setdefault(band, set()).add(key)
        evicted: list[K] = []
        while len(self._members) > self.capacity:
            oldest = next(iter(self._members))
            self.remove(oldest)
            evicted.append(oldest)
        return evicted

    def remove(self, key: K) -> None:
        member = self._members.pop(key, None)
        if member is None:
            return
        for band in member.bands:
            bucket = self._buckets.get(band)
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self._buckets[band]
