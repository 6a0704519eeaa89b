"""A primer's KV cells per coding context: made once by a stream of the primer's tokens
through the same fixed-width steps as any stream, then kept (a bounded LRU) for every
primed stream at that context key to start from."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .engine import CodingEngine, ContextKey, JobTiming, PrimerState, SeqState, StreamWork
from .layout import Schedule
from .rows import IdentityRowModel, StreamEvaluator

# SmolLM2-135M keeps ~23 KB of KV per token (30 layers x 2 x 192 f16), so a 1,024-token
# primer is ~24 MB at each context key it is used at: this holds a few primers at two keys.
MAX_BYTES = 256 << 20


class PrimerStates:
    """The primer cells of recently used (context key, primer tokens), at most `max_bytes`
    of them (the newest always kept). Concurrent requests for the same primer share one
    engine job; that job runs to the end even when they are all cancelled, so its cells
    are kept for the next."""

    def __init__(self, engine: CodingEngine, max_bytes: int = MAX_BYTES) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self.made = 0  # engine jobs run for a primer: what the bound costs
        self._states: OrderedDict[tuple[ContextKey, bytes], PrimerState] = OrderedDict()
        self._making: dict[tuple[ContextKey, bytes], concurrent.futures.Future[PrimerState]] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._states.values())

    async def get(self, key: ContextKey, tokens: Sequence[int]) -> PrimerState:
        """The cells of primer `tokens` (at least one) at context `key`."""
        if not tokens:
            raise ValueError("an empty primer has no cells")
        ident = (key, hashlib.sha256(np.asarray(tokens, dtype="<i4").tobytes()).digest())
        with self._lock:
            state = self._states.get(ident)
            if state is not None:
                self._states.move_to_end(ident)
                return state
            future = self._making.get(ident)
            owner = future is None
            if future is None:
                future = self._making[ident] = concurrent.futures.Future()
        if owner:
            self._make(ident, key, list(tokens), future)
        # Shielded: a cancelled caller leaves the job to finish for the others.
        return await asyncio.shield(asyncio.wrap_future(future))

    def _make(
        self,
        ident: tuple[ContextKey, bytes],
        key: ContextKey,
        tokens: list[int],
        out: concurrent.futures.Future[PrimerState],
    ) -> None:
        kept: list[SeqState] = []
        # The primer as a stream: its rows' inputs are the start token and every primer
        # token but the last, which is the primed stream's first input.
        work = StreamWork(
            StreamEvaluator(tokens), IdentityRowModel(), len(tokens), snapshot=kept.append
        )

        def settle(job: concurrent.futures.Future[JobTiming]) -> None:
            error: BaseException | None
            if job.cancelled():
                error = asyncio.CancelledError()
            else:
                error = job.exception() or (
                    None if kept else RuntimeError("the primer job kept no cells")
                )
            with self._lock:
                self._making.pop(ident, None)
                if error is None:
                    state = PrimerState(key, len(tokens), tokens[-1], kept[0])
                    self._states[ident] = state
                    self.made += 1
                    self._evict()
            if error is not None:
                out.set_exception(error)
            else:
                out.set_result(state)

        try:
            job = self.engine.submit([work], key, Schedule.RESET)
        except BaseException as exc:
            with self._lock:
                self._making.pop(ident, None)
            out.set_exception(exc)
            return
        job.add_done_callback(settle)

    def _evict(self) -> None:
        total = sum(s.nbytes for s in self._states.values())
        while len(self._states) > 1 and total > self.max_bytes:
            _, old = self._states.popitem(last=False)
            total -= old.nbytes


__all__ = ["MAX_BYTES", "PrimerStates"]
