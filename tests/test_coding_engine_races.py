"""The coding engine's bookkeeping: a caller that cancels, or a job that fails, while a
lane steps outside the lock; and how the lanes share the waiting streams.

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
KEY_16 = ContextKey(width=16, threads=1, n_ctx=64)


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


class _Slots:
    """Stands in for a CodingContext's slot bookkeeping (what `_admit` uses)."""

    def __init__(self, width: int) -> None:
        self.slots: list[Any] = [None] * width

    @property
    def active(self) -> int:
        return sum(s is not None for s in self.slots)

    def free_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is None]

    def put(self, index: int, job: _Job, work: Any) -> None:
        self.slots[index] = (job, work)

    def drop_dead(self) -> list[_Job]:
        return []


def test_the_lanes_split_the_waiting_streams_instead_of_the_first_awake_taking_all() -> None:
    """A lane runs on its own core: 10 streams over two lanes of 16 slots go 5 and 5, not
    10 and 0 (stop 27's bench saw 22% of the rows live with 12 items in flight)."""
    engine = CodingEngine(model=None, key=KEY_16, lanes=2)
    first, second = engine._lanes
    for lane in engine._lanes:
        lane.contexts[KEY_16] = _Slots(16)  # type: ignore[assignment]
    future: concurrent.futures.Future[JobTiming] = concurrent.futures.Future()
    engine._jobs.append(_Job(KEY_16, Schedule.RESET, [_Stream() for _ in range(10)], future))

    with engine._cond:
        engine._admit(first)
        assert first.contexts[KEY_16].active == 5
        engine._admit(second)
    assert second.contexts[KEY_16].active == 5
    assert engine.queue_depth == 0
