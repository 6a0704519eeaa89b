"""Retry policy: which backend failures are worth another try, and how long to wait first.

Exponential backoff with full jitter (sleep uniform(0, min(max_delay, base * 2**n))),
never past the caller's deadline. Only `BackendError.retryable` failures are
retried: connection errors, timeouts, 429/5xx, garbage and mid-stream error
lines; never 400/401/404 (see transport.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.errors import BackendError


@dataclass(frozen=True)
class RetryPolicy:
    """Which backend failures are retried, and the jittered wait before each retry."""

    max_retries: int = 3
    base_delay: float = 0.1
    max_delay: float = 5.0

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """`attempt` counts the tries made so far (1 after the first failure)."""
        return isinstance(exc, BackendError) and exc.retryable and attempt <= self.max_retries

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return (rng or random).uniform(0.0, cap)
