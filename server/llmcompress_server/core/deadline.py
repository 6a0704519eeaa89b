"""The caller's deadline, carried in a context variable from the servicer down to backend calls.

A gRPC deadline (`context.time_remaining()`) set here bounds every backend
HTTP call and every retry delay made on the caller's behalf; tasks spawned
for a stream's items inherit it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("llmcompress_deadline", default=None)


@contextmanager
def deadline_scope(seconds: float | None) -> Iterator[None]:
    """Calls inside must finish within `seconds` (None: no deadline, or keep the outer one)."""
    if seconds is None:
        yield
        return
    limit = time.monotonic() + max(0.0, seconds)
    outer = _deadline.get()
    token = _deadline.set(limit if outer is None else min(outer, limit))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the caller's deadline, or None when there is none."""
    limit = _deadline.get()
    return None if limit is None else limit - time.monotonic()
