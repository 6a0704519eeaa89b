"""Single-flight: concurrent identical requests share one computation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

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
