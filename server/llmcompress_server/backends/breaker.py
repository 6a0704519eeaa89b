"""A circuit breaker per endpoint: closed -> open (cooling down) -> half-open (one probe) -> closed.

`failures` consecutive endpoint failures open it for `cooldown` seconds; then
one request (or a health probe) may try: success closes it, failure opens it
again. Busy answers (429/503) do not count: the endpoint is alive.
"""

from __future__ import annotations

import time
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One endpoint's breaker: counts consecutive failures and says when to try again."""

    def __init__(self, failures: int = 5, cooldown: float = 5.0) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.last_error = ""
        self._probing = False

    def available(self) -> bool:
        """May a request go to this endpoint now? (Does not reserve the half-open probe.)"""
        if self.state is BreakerState.OPEN and time.monotonic() - self.opened_at >= self.cooldown:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            return not self._probing
        return self.state is BreakerState.CLOSED

    def begin(self) -> None:
        """A request was routed here; in half-open state it is the one probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self._probing = False

    def failure(self, reason: str = "") -> None:
        self.consecutive += 1
        self.last_error = reason
        if self.state is BreakerState.HALF_OPEN or self.consecutive >= self.threshold:
            self.state = BreakerState.OPEN
            self.opened_at = time.monotonic()
        self._probing = False

    def release(self) -> None:
        """The request ended without a verdict (cancelled, or a not-the-endpoint's-fault error)."""
        self._probing = False
