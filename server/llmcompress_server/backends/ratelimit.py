"""A token bucket: at most `per_minute` requests per minute on average, `burst` at once."""

from __future__ import annotations

import asyncio
import time

from ..core.errors import DeadlineExceeded


class TokenBucket:
    """Requests per minute with a burst; `acquire` waits for a token within the deadline."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, budget: float | None = None) -> None:
        """Take one token, waiting for it; DeadlineExceeded if that takes over `budget` s."""
        if not self.enabled:
            return
        # The lock makes waiters take tokens in arrival order.
        async with self._lock:
            self._refill()
            if self.tokens < 1.0:
                wait = (1.0 - self.tokens) / self.rate
                if budget is not None and wait > budget:
                    raise DeadlineExceeded(
                        f"the backend rate limit (llm.rate_limit = {self.rate * 60:g}/min) "
                        f"needs {wait:.1f}s before the next call, beyond the request's deadline"
                    )
                await asyncio.sleep(wait)
                self._refill()
            self.tokens -= 1.0
