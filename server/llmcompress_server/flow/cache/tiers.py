"""The two cache tiers: an in-process LRU with TTL, and an optional Redis shared by replicas.

Only envelopes are stored, never the text. A slow or dead Redis degrades to
the in-process tier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from ...core.events import Events
from .keys import SCHEMA

log = logging.getLogger(__name__)

REDIS_NAMESPACE = f"llmc:v{SCHEMA}"


class MemoryTier:
    """LRU with a fixed TTL per entry, bounded by entry count and total bytes; O(1) per call.

    Bytes matter as well as entries: envelopes range from tens of bytes to
    megabytes, so 50,000 entries alone could mean 50 MB or 50 GB. It holds any value
    with its size in bytes; the result cache keeps parsed entries here, so a hit
    parses nothing (an entry's JSON and envelope parse were most of a short hit's cost).
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        events: Events | None = None,
    ) -> None:
        self.events = events if events is not None else Events()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[bytes, tuple[float, Any, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value, _ = item
        if expires <= self._clock():
            self._drop(key)
            self.events.cache_event("expire", "memory", 0.0)
            return None
        self._items.move_to_end(key)
        return value

    def set(self, key: bytes, value: Any, size: int | None = None) -> None:
        """Store `value`, counted as `size` bytes (default: its len)."""
        size = len(value) if size is None else size
        if self.max_entries == 0 or size > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        now = self._clock()
        expires = now + self.ttl if self.ttl > 0 else float("inf")
        self._items[key] = (expires, value, size)
        self.bytes += size
        self._purge_front(now)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
            self.events.cache_event("evict", "memory", 0.0)

    def delete(self, key: bytes) -> None:
        if key in self._items:
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        _, _, size = self._items.pop(key)
        self.bytes -= size

    def _purge_front(self, now: float, limit: int = 4) -> None:
        # A few expired entries at the LRU end go each insert, so dead entries
        # do not sit in the bound until pushed out; bounded work per call.
        for _ in range(limit):
            if not self._items:
                return
            key, (expires, _, _) = next(iter(self._items.items()))
            if expires > now:
                return
            self._drop(key)
            self.events.cache_event("expire", "memory", 0.0)


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
        events: Events | None = None,
    ) -> None:
        self.events = events if events is not None else Events()
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
        self.events.cache_event("error", "redis", 0.0)
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
            self.events.cache_event("skip", "redis", 0.0)
            return None
        coro = self._cache.get(key.hex())
        ok, value = await self._call(coro)
        return value if ok and isinstance(value, bytes) else None

    async def set(self, key: bytes, value: bytes) -> None:
        if not self.available:
            self.events.cache_event("skip", "redis", 0.0)
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
