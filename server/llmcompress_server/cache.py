"""The result cache: sealed envelopes keyed by every input that shapes them.

Tier 1 is an in-process LRU with TTL, bounded by entries and bytes; tier 2 is
an optional Redis (aiocache `RedisCache`) shared by replicas. Only envelopes
are stored, never the text. Concurrent identical requests share one
computation (`SingleFlight`). A slow or dead Redis degrades to tier 1.

Codec hook: a codec opts in by defining

    def cache_params(self, opts: CompressOptions) -> CacheParams | None

returning every codec-side input that changes its output for `opts`: a codec
version (bump it when the output for the same input changes), the model name
and full sha256, and the options and settings that matter (verify, target
ratio, quality tier, zstd level, n_ctx, ...). Returning None (e.g. the model
identity is not known yet) skips the cache for that request. A codec without
the hook is never cached: a key that missed the model would serve envelopes
of a replaced model.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

from llmcompress.v1 import compression_pb2 as pb

from .codecs import CompressOptions
from .config import Config, Mode
from .envelope import FORMAT_VERSION, model_name, open_envelope, text_hash
from .errors import LLMCompressError
from .stages import StageClock

log = logging.getLogger(__name__)

CacheParams = Mapping[str, str | int | float | bool]

# Bump when the key recipe or the entry format below changes.
SCHEMA = 1
_ENTRY_MAGIC = b"LCE1"
_META_LEN = struct.Struct(">I")
_KEY_BYTES = 32
REDIS_NAMESPACE = f"llmc:v{SCHEMA}"

# Called with (event, tier, seconds) on every cache event; telemetry registers here.
# Events: "hit", "miss" (seconds = lookup time), "store", "evict", "expire",
# "corrupt", "error" (Redis failed or timed out), "skip" (Redis in backoff),
# "coalesced" (joined an identical in-flight request).
CacheObserver = Callable[[str, str, float], None]
_observers: list[CacheObserver] = []


def add_cache_observer(observer: CacheObserver) -> None:
    _observers.append(observer)


def remove_cache_observer(observer: CacheObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


def _emit(event: str, tier: str, seconds: float = 0.0) -> None:
    for observer in _observers:
        observer(event, tier, seconds)


@runtime_checkable
class CacheableCodec(Protocol):
    def cache_params(self, opts: CompressOptions) -> CacheParams | None: ...


def cache_key(data: bytes, mode: Mode, params: CacheParams) -> bytes:
    """SHA-256 over a canonical JSON of the text's full sha256, the mode and the codec's params."""
    recipe = {
        "schema": SCHEMA,
        "envelope_format": FORMAT_VERSION,
        "text_sha256": hashlib.sha256(data).hexdigest(),
        "mode": mode.value,
        "codec": dict(params),
    }
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


class CorruptEntry(ValueError):
    """A stored value is not an entry for this key and text; treat as a miss."""


@dataclass(frozen=True)
class CachedResult:
    """What a hit must give back: the envelope plus how it was made."""

    envelope: bytes
    # Read from the envelope itself on unpack, so a hit reports what it holds.
    mode: pb.Mode.ValueType = pb.MODE_UNSPECIFIED
    model: str = ""
    backend: str = ""
    degraded: bool = False
    reason: str = ""
    quality: pb.QualityScores | None = None

    def pack(self, key: bytes) -> bytes:
        meta = {
            "backend": self.backend,
            "degraded": self.degraded,
            "reason": self.reason,
            "quality": base64.b64encode(self.quality.SerializeToString()).decode("ascii")
            if self.quality is not None
            else None,
        }
        raw = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        return b"".join((_ENTRY_MAGIC, key, _META_LEN.pack(len(raw)), raw, self.envelope))

    @classmethod
    def unpack(cls, key: bytes, value: bytes, data: bytes) -> CachedResult:
        """Parse and check an entry: its key, its envelope header, and the text it holds."""
        head = len(_ENTRY_MAGIC) + _KEY_BYTES
        if len(value) < head + _META_LEN.size or not value.startswith(_ENTRY_MAGIC):
            raise CorruptEntry("not a cache entry")
        if value[len(_ENTRY_MAGIC) : head] != key:
            raise CorruptEntry("entry stored under another key")
        (meta_len,) = _META_LEN.unpack_from(value, head)
        body = head + _META_LEN.size
        try:
            meta = json.loads(value[body : body + meta_len])
            envelope = value[body + meta_len :]
            env = open_envelope(envelope)
            quality = None
            if meta["quality"] is not None:
                quality = pb.QualityScores.FromString(base64.b64decode(meta["quality"]))
            result = cls(
                envelope=envelope,
                mode=env.mode,
                model=model_name(env.model),
                backend=str(meta["backend"]),
                degraded=bool(meta["degraded"]),
                reason=str(meta["reason"]),
                quality=quality,
            )
        except (ValueError, KeyError, TypeError, LLMCompressError) as exc:
            raise CorruptEntry(f"unreadable entry: {exc}") from None
        if env.original_length != len(data) or env.original_hash != text_hash(data):
            raise CorruptEntry("entry holds an envelope of another text")
        return result


class MemoryTier:
    """LRU with a fixed TTL per entry, bounded by entry count and total bytes; O(1) per call.

    Bytes matter as well as entries: envelopes range from tens of bytes to
    megabytes, so 50,000 entries alone could mean 50 MB or 50 GB.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            self._drop(key)
            _emit("expire", "memory")
            return None
        self._items.move_to_end(key)
        return value

    def set(self, key: bytes, value: bytes) -> None:
        if self.max_entries == 0 or len(value) > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        now = self._clock()
        expires = now + self.ttl if self.ttl > 0 else float("inf")
        self._items[key] = (expires, value)
        self.bytes += len(value)
        self._purge_front(now)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= len(dropped)
            _emit("evict", "memory")

    def delete(self, key: bytes) -> None:
        if key in self._items:
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value)

    def _purge_front(self, now: float, limit: int = 4) -> None:
        # A few expired entries at the LRU end go each insert, so dead entries
        # do not sit in the bound until pushed out; bounded work per call.
        for _ in range(limit):
            if not self._items:
                return
            key, (expires, _) = next(iter(self._items.items()))
            if expires > now:
                return
            self._drop(key)
            _emit("expire", "memory")


def _redis_target(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"cache.redis_url must be redis:// or rediss://, got {parts.scheme!r}")
    db = parts.path.strip("/") or "0"
    return {
        "endpoint": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db),
        "password": unquote(parts.password) if parts.password else None,
        "ssl": parts.scheme == "rediss",
    }


class RedisTier:
    """Redis through aiocache; every call bounded by `timeout`, with a backoff after a failure.

    Failures never raise: they count, log (at most every `log_every` s) and
    make the tier sit out a growing backoff so a dead Redis is not hammered.
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        ttl: float,
        backoff: tuple[float, float] = (0.5, 30.0),
        log_every: float = 30.0,
    ) -> None:
        # Imported here: a server without Redis never loads the client.
        from aiocache import RedisCache
        from aiocache.serializers import NullSerializer

        target = _redis_target(url)
        self.where = f"{target['endpoint']}:{target['port']}/{target['db']}"  # no password
        self.timeout = timeout
        self.ttl = ttl
        self._backoff_min, self._backoff_max = backoff
        self._backoff = 0.0
        self._retry_at = 0.0
        self._log_every = log_every
        self._last_log = -float("inf")
        self.errors = 0
        self._cache = RedisCache(
            serializer=NullSerializer(encoding=None),  # raw bytes in and out
            namespace=REDIS_NAMESPACE,
            timeout=0,  # bounded below with asyncio.timeout, connect included
            create_connection_timeout=timeout,
            connection_pool_kwargs={"socket_timeout": timeout},
            **target,
        )

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._retry_at

    async def _call(self, op: Awaitable[Any]) -> tuple[bool, Any]:
        try:
            async with asyncio.timeout(self.timeout):
                value = await op
        except Exception as exc:  # any failure of the tier degrades to tier 1
            self._failed(exc)
            return False, None
        self._backoff = 0.0
        return True, value

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        _emit("error", "redis")
        self._backoff = min(max(self._backoff * 2, self._backoff_min), self._backoff_max)
        now = time.monotonic()
        self._retry_at = now + self._backoff
        if now - self._last_log >= self._log_every:
            self._last_log = now
            log.warning(
                "Redis cache at %s failed (%s); serving from the in-process tier, "
                "retrying in %.1fs (%d failures so far)",
                self.where,
                type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                self._backoff,
                self.errors,
            )

    async def get(self, key: bytes) -> bytes | None:
        if not self.available:
            _emit("skip", "redis")
            return None
        coro = self._cache.get(key.hex())
        ok, value = await self._call(coro)
        return value if ok and isinstance(value, bytes) else None

    async def set(self, key: bytes, value: bytes) -> None:
        if not self.available:
            _emit("skip", "redis")
            return
        # aiocache's set() sends PSETEX, which redis-py 8 deprecates; SET PX is the same write.
        expiry = {"px": max(int(self.ttl * 1000), 1)} if self.ttl > 0 else {}
        await self._call(self._cache.raw("set", self._cache.build_key(key.hex()), value, **expiry))

    async def delete(self, key: bytes) -> None:
        if self.available:
            await self._call(self._cache.delete(key.hex()))

    async def close(self) -> None:
        # aiocache's close() calls redis' deprecated close(); aclose() is its successor.
        try:
            await self._cache.client.aclose()
        except Exception as exc:  # closing a dead connection must not fail shutdown
            log.debug("closing the Redis client: %s", exc)


T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent calls with the same key share one run of the function.

    The run is its own task, so a caller that gives up (deadline, cancel)
    does not cancel it for the others; when the last caller gives up, the run
    is cancelled too, so a cancel still reaches the backend. Every caller gets
    its result or its exception; nothing is remembered after it ends.
    """

    def __init__(self) -> None:
        self._runs: dict[Hashable, asyncio.Future[T]] = {}
        self._waiters: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._runs

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return (result, shared); `shared` is True for callers that joined a run."""
        run = self._runs.get(key)
        shared = run is not None
        if run is None:
            run = asyncio.ensure_future(fn())
            self._runs[key] = run
            self._waiters[key] = 0
            run.add_done_callback(lambda done: self._finished(key, done))
        self._waiters[key] += 1
        try:
            return await asyncio.shield(run), shared
        except asyncio.CancelledError:
            if self._runs.get(key) is run and not run.done():
                self._waiters[key] -= 1
                if self._waiters[key] == 0:
                    # Nobody is left to want the result; a caller arriving now starts afresh.
                    del self._runs[key], self._waiters[key]
                    run.cancel()
            raise

    def _finished(self, key: Hashable, run: asyncio.Future[T]) -> None:
        if self._runs.get(key) is run:
            del self._runs[key]
            del self._waiters[key]
        if not run.cancelled():
            run.exception()  # retrieved here, so an unawaited failure logs no noise


@dataclass
class _TierCounters:
    hits: int = 0
    misses: int = 0
    lookup_seconds: float = 0.0

    def record(self, hit: bool, seconds: float, tier: str) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        self.lookup_seconds += seconds
        _emit("hit" if hit else "miss", tier, seconds)

    def to_pb(self, tier: str) -> pb.CacheTierStats:
        lookups = self.hits + self.misses
        return pb.CacheTierStats(
            tier=tier,
            hits=self.hits,
            misses=self.misses,
            hit_ratio=self.hits / lookups if lookups else 0.0,
            avg_lookup_seconds=self.lookup_seconds / lookups if lookups else 0.0,
            available=True,
        )


Computation = Callable[[], Awaitable[CachedResult]]


class ResultCache:
    """Both tiers plus single-flight; the pipeline's one entry point to caching."""

    def __init__(self, memory: MemoryTier, redis: RedisTier | None = None) -> None:
        self.memory = memory
        self.redis = redis
        self.flights: SingleFlight[tuple[CachedResult, str]] = SingleFlight()
        self._memory_stats = _TierCounters()
        self._redis_stats = _TierCounters()
        self.coalesced = 0
        self.computed = 0

    @classmethod
    def from_config(cls, config: Config) -> ResultCache:
        perf, conf = config.performance, config.cache
        memory = MemoryTier(perf.cache_size, conf.max_bytes, perf.cache_ttl)
        redis = None
        if conf.redis_url:
            redis = RedisTier(conf.redis_url, conf.redis_timeout, perf.cache_ttl)
        return cls(memory, redis)

    @staticmethod
    def key_for(codec: object, data: bytes, mode: Mode, opts: CompressOptions) -> bytes | None:
        """The key, or None when the codec cannot name what shapes its output."""
        if not isinstance(codec, CacheableCodec):
            return None
        params = codec.cache_params(opts)
        return None if params is None else cache_key(data, mode, params)

    def lookup_memory(self, key: bytes, data: bytes) -> CachedResult | None:
        start = time.perf_counter()
        value = self.memory.get(key)
        found = None
        if value is not None:
            try:
                found = CachedResult.unpack(key, value, data)
            except CorruptEntry:  # cannot happen short of a bug; never serve it
                self.memory.delete(key)
                _emit("corrupt", "memory")
        self._memory_stats.record(found is not None, time.perf_counter() - start, "memory")
        return found

    async def lookup_redis(self, key: bytes, data: bytes) -> CachedResult | None:
        """A Redis hit is copied into memory, where its TTL restarts (so a hot entry
        lives at most twice the TTL; the key, not the TTL, keeps it correct)."""
        if self.redis is None or not self.redis.available:
            if self.redis is not None:
                _emit("skip", "redis")
            return None
        start = time.perf_counter()
        value = await self.redis.get(key)
        found = None
        if value is not None:
            try:
                found = CachedResult.unpack(key, value, data)
            except CorruptEntry as exc:
                log.warning("dropping a corrupt Redis cache entry (%s)", exc)
                _emit("corrupt", "redis")
                await self.redis.delete(key)
            else:
                self.memory.set(key, value)
        self._redis_stats.record(found is not None, time.perf_counter() - start, "redis")
        return found

    async def store(self, key: bytes, result: CachedResult) -> None:
        value = result.pack(key)
        start = time.perf_counter()
        self.memory.set(key, value)
        _emit("store", "memory", time.perf_counter() - start)
        if self.redis is not None:
            start = time.perf_counter()
            await self.redis.set(key, value)
            _emit("store", "redis", time.perf_counter() - start)

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
            _emit("coalesced", "flight")
            return result, "coalesced"
        (result, source), _ = await self.flights.run(key, flight)
        return result, source

    def tier_stats(self) -> list[pb.CacheTierStats]:
        memory = self._memory_stats.to_pb("memory")
        memory.size, memory.max_size = len(self.memory), self.memory.max_entries
        memory.bytes, memory.max_bytes = self.memory.bytes, self.memory.max_bytes
        tiers = [memory]
        hits = self._memory_stats.hits + self.coalesced
        if self.redis is not None:
            redis = self._redis_stats.to_pb("redis")
            redis.available = self.redis.available
            redis.errors = self.redis.errors
            tiers.append(redis)
            hits += self._redis_stats.hits
        lookups = self._memory_stats.hits + self._memory_stats.misses
        total = pb.CacheTierStats(
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
