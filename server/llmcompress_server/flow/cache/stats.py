"""Cache statistics as plain data: per-tier counters, and what GetStats reports of each tier."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TierStats:
    """One tier's (or the total's) hits and size; the servicer turns it into CacheTierStats."""

    tier: str
    hits: int = 0
    misses: int = 0
    hit_ratio: float = 0.0
    avg_lookup_seconds: float = 0.0
    available: bool = True
    size: int = 0
    max_size: int = 0
    bytes: int = 0
    max_bytes: int = 0
    errors: int = 0


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0
    lookup_seconds: float = 0.0

    def record(self, hit: bool, seconds: float) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        self.lookup_seconds += seconds

    def stats(self, tier: str) -> TierStats:
        lookups = self.hits + self.misses
        return TierStats(
            tier=tier,
            hits=self.hits,
            misses=self.misses,
            hit_ratio=self.hits / lookups if lookups else 0.0,
            avg_lookup_seconds=self.lookup_seconds / lookups if lookups else 0.0,
        )
