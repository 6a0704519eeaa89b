"""Admission control: a bound on queued + running requests, server-wide.

A unary call that finds the server full gets RESOURCE_EXHAUSTED at once, with
a retry hint, instead of joining an unbounded queue (Ollama's runner queue is
unbounded once a model is loaded: ollama/ollama#7758). BatchCompress streams
are bounded by their own window and wait for room instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..core.errors import Overloaded


class Admission:
    """A server-wide bound on queued + running requests: refuse now (`admit`) or wait (`wait`)."""

    def __init__(self, limit: int, retry_after: float = 0.5) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.active = 0
        self._room = asyncio.Condition()

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Enter now or raise Overloaded (for unary calls)."""
        if self.active >= self.limit:
            raise Overloaded(
                f"server is at its limit of {self.limit} queued + running requests "
                "(performance.max_queue); retry after the hinted delay",
                retry_after=self.retry_after,
            )
        self.active += 1
        try:
            yield
        finally:
            await self._leave()

    @asynccontextmanager
    async def wait(self) -> AsyncIterator[None]:
        """Enter when there is room (for stream items, which have backpressure)."""
        async with self._room:
            await self._room.wait_for(lambda: self.active < self.limit)
            self.active += 1
        try:
            yield
        finally:
            await self._leave()

    async def _leave(self) -> None:
        async with self._room:
            self.active -= 1
            self._room.notify()
