"""The coding engine's bookkeeping when a caller cancels, or a job fails, while a lane
steps outside the lock.

A lane runs `llama_decode` without the engine's lock, so another lane may take a
cancelled or failed job out of the queue in the meantime. On the real model that
interleaving is a matter of luck (CI hit it once in the randomized test of
`test_coding_engine.py`); here a stand-in context does it at the exact point, with no
model loaded: the engine's lanes are never started.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmcompress_server.coding.engine import CodingEngine, ContextKey, JobTiming, _Job, _Lane
from llmcompress_server.coding.layout import Schedule

KEY = ContextKey(width=2, threads=1, n_ctx=64)


@dataclass
class _Stream:
    n_tokens: int = 8


@dataclass
class _SteppedContext:
    """Stands in for a CodingContext: its step runs `during` (what another thread does
    while llama_decode runs) and reports `finished` as done with a stream."""

    finished: list[_Job]
    during: Callable[[], None]
    key: ContextKey = KEY
    slots: list[Any] = field(default_factory=lambda: [None] * KEY.width)

    def step(self) -> tuple[list[_Job], int]:
        self.during()
        return self.finished, len(self.finished)


def _queued(engine: CodingEngine, n_streams: int) -> _Job:
    """A job with every stream admitted to a slot (none pending)."""
    future: concurrent.futures.Future[JobTiming] = concurrent.futures.Future()
    job = _Job(KEY, Schedule.RESET, [_Stream() for _ in range(n_streams)], future)
    job.next_stream = job.active = n_streams
    engine._jobs.append(job)
    return job


def test_a_job_cancelled_while_its_last_stream_is_coded_settles_once() -> None:
    engine = CodingEngine(model=None, key=KEY, lanes=2)
    job = _queued(engine, n_streams=1)
    other_lane = _Lane(1)

    def cancel_then_other_lane_admits() -> None:
        job.future.cancel()
        with engine._cond:
            engine._admit(other_lane)  # takes the dead job out while it still holds a slot

    engine._step(_SteppedContext([job], cancel_then_other_lane_admits))  # type: ignore[arg-type]

    assert job not in engine._jobs
    assert job.active == 0
    assert job.future.cancelled()
    assert engine.idle


def test_a_failed_job_whose_last_live_stream_finishes_elsewhere_still_gets_its_error() -> None:
    engine = CodingEngine(model=None, key=KEY, lanes=2)
    job = _queued(engine, n_streams=2)
    failure = ValueError("the row model failed on the other stream")
    other_lane = _Lane(1)

    def fail_then_other_lane_drops_its_slot() -> None:
        # The other stream failed on the other lane, whose admit drops its slot and
        # takes the job out of the queue; this lane still codes the job's first stream.
        job.error = failure
        job.active -= 1
        with engine._cond:
            engine._admit(other_lane)

    engine._step(_SteppedContext([job], fail_then_other_lane_drops_its_slot))  # type: ignore[arg-type]

    assert job.active == 0
    assert job.future.done(), "the caller would wait forever"
    with pytest.raises(ValueError, match="row model failed"):
        job.future.result(timeout=0)
    assert engine.idle
