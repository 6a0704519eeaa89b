"""The result cache: sealed envelopes keyed by every input that shapes them.

Tier 1 is an in-process LRU with TTL, bounded by entries and bytes; tier 2 is
an optional Redis shared by replicas (tiers.py). Concurrent identical requests
share one computation (single_flight.py). Every lookup and store is reported to
the server's `Events`; `tier_stats()` gives the counts GetStats reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ...core.config import Config
from ...core.events import Events
from ...telemetry.stages import StageClock
from .entries import CachedResult, CorruptEntry
from .single_flight import SingleFlight
from .stats import TierCounters, TierStats
from .tiers import MemoryTier, RedisTier

log = logging.getLogger(__name__)

Computation = Callable[[], Awaitable[CachedResult]]


class ResultCache:
    """Both tiers plus single-flight; the pipeline's one entry point to caching."""

    def __init__(
        self, memory: MemoryTier, redis: RedisTier | None = None, events: Events | None = None
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.events = events if events is not None else Events()
        self.flights: SingleFlight[tuple[CachedResult, str]] = SingleFlight()
        self._memory_stats = TierCounters()
        self._redis_stats = TierCounters()
        self.coalesced = 0
        self.computed = 0

    @classmethod
    def from_config(cls, config: Config, events: Events | None = None) -> ResultCache:
        perf, conf = config.performance, config.cache
        events = events if events is not None else Events()
        memory = MemoryTier(perf.cache_size, conf.max_bytes, perf.cache_ttl, events=events)
        redis = None
        if conf.redis_url:
            redis = RedisTier(conf.redis_url, conf.redis_timeout, perf.cache_ttl, events=events)
        return cls(memory, redis, events)

    def _looked_up(self, counters: TierCounters, tier: str, hit: bool, seconds: float) -> None:
        counters.record(hit, seconds)
        self.events.cache_event("hit" if hit else "miss", tier, seconds)

    def lookup_memory(self, key: bytes, data: bytes) -> CachedResult | None:
        """The entry this process stored under `key` (a SHA-256 of the text and how it is
        coded), already parsed: the checks `unpack` makes are for bytes from Redis."""
        start = time.perf_counter()
        found: CachedResult | None = self.memory.get(key)
        self._looked_up(
            self._memory_stats, "memory", found is not None, time.perf_counter() - start
        )
        return found

    async def lookup_redis(self, key: bytes, data: bytes) -> CachedResult | None:
        """A Redis hit is copied into memory, where its TTL restarts (so a hot entry
        lives at most twice the TTL; the key, not the TTL, keeps it correct)."""
        if self.redis is None or not self.redis.available:
            if self.redis is not None:
                self.events.cache_event("skip", "redis")
            return None
        start = time.perf_counter()
        value = await self.redis.get(key)
        found = None
        if value is not None:
            try:
                found = CachedResult.unpack(key, value, data)
            except CorruptEntry as exc:
                log.warning("dropping a corrupt Redis cache entry (%s)", exc)
                self.events.cache_event("corrupt", "redis")
                await self.redis.delete(key)
            else:
                self.memory.set(key, found, found.stored_bytes)
        seconds = time.perf_counter() - start
        self._looked_up(self._redis_stats, "redis", found is not None, seconds)
        return found

    def store_memory(self, key: bytes, result: CachedResult) -> None:
        """Store in the in-process tier alone."""
        start = time.perf_counter()
        self.memory.set(key, result, result.stored_bytes)
        self.events.cache_event("store", "memory", time.perf_counter() - start)

    async def store(self, key: bytes, result: CachedResult) -> None:
        self.store_memory(key, result)
        if self.redis is not None:
            start = time.perf_counter()
            await self.redis.set(key, result.pack(key))
            self.events.cache_event("store", "redis", time.perf_counter() - start)

    async def resolve(
        self, key: bytes, data: bytes, compute: Computation, clock: StageClock
    ) -> tuple[CachedResult, str]:
        """The entry for `key`, computing it at most once across concurrent callers.

        Returns (result, source), source being "memory", "redis", "coalesced"
        (joined an identical request in flight) or "computed".
        """
        with clock.stage("cache.lookup"):
            found = self.lookup_memory(key, data)
        if found is not None:
            return found, "memory"

        async def flight() -> tuple[CachedResult, str]:
            if self.redis is not None:
                with clock.stage("cache.lookup.redis"):
                    hit = await self.lookup_redis(key, data)
                if hit is not None:
                    return hit, "redis"
            result = await compute()
            self.computed += 1
            if not result.degraded:
                # A fallback (e.g. backend down) would pin the fallback for the
                # whole TTL; only results the request asked for are kept.
                with clock.stage("cache.store"):
                    await self.store(key, result)
            return result, "computed"

        # Checked and joined with no await in between: a run that ended has
        # already stored its result in memory, where the lookup above saw it.
        if key in self.flights:
            with clock.stage("cache.coalesce"):
                (result, _), _ = await self.flights.run(key, flight)
            self.coalesced += 1
            self.events.cache_event("coalesced", "flight")
            return result, "coalesced"
        (result, source), _ = await self.flights.run(key, flight)
        return result, source

    def tier_stats(self) -> list[TierStats]:
        """Each tier, then the total (coalesced requests count as hits)."""
        memory = replace(
            self._memory_stats.stats("memory"),
            size=len(self.memory),
            max_size=self.memory.max_entries,
            bytes=self.memory.bytes,
            max_bytes=self.memory.max_bytes,
        )
        tiers = [memory]
        hits = self._memory_stats.hits + self.coalesced
        if self.redis is not None:
            redis = replace(
                self._redis_stats.stats("redis"),
                available=self.redis.available,
                errors=self.redis.errors,
            )
            tiers.append(redis)
            hits += self._redis_stats.hits
        lookups = self._memory_stats.hits + self._memory_stats.misses
        total = TierStats(
            tier="total",
            hits=hits,
            misses=max(lookups - hits, 0),
            hit_ratio=hits / lookups if lookups else 0.0,
            size=len(self.memory),
            max_size=self.memory.max_entries,
            available=True,
        )
        return [*tiers, total]

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
