"""Stream layouts (pure functions of what the envelope stores, valid for every size) and the
coding engine's queue bound; no model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmcompress_server.coding.engine import CodingEngine, ContextKey, StreamWork
from llmcompress_server.coding.layout import Layout, Schedule
from llmcompress_server.coding.rows import IdentityRowModel, StreamEvaluator
from llmcompress_server.core.errors import BackendError, Overloaded


def test_t1_is_consecutive_chunks_of_n_ctx() -> None:
    layout = Layout(Schedule.T1, 2048)
    assert layout.lengths(2811, 0) == [2048, 763]
    assert layout.lengths(0, 0) == [0]
    assert layout.stream_count(5000, width=16) == 3
    assert layout.valid_count(2811, 2) and not layout.valid_count(2811, 1)


@given(
    n=st.integers(0, 200_000),
    width=st.sampled_from([1, 2, 8, 16, 32]),
    n_ctx=st.sampled_from([64, 128, 2048]),
    schedule=st.sampled_from([Schedule.RESET, Schedule.SLIDE]),
)
def test_the_encoders_choice_is_valid_and_covers_every_token(
    n: int, width: int, n_ctx: int, schedule: Schedule
) -> None:
    layout = Layout(schedule, n_ctx)
    count = layout.stream_count(n, width)
    lengths = layout.lengths(n, count)
    assert layout.valid_count(n, count)
    assert sum(lengths) == n and len(lengths) == count
    assert max(lengths) - min(lengths) <= 1
    if schedule is Schedule.RESET:
        assert max(lengths) <= n_ctx
    if count > width:  # whole rounds of the width
        assert count % width == 0


def test_counts_a_decoder_must_refuse() -> None:
    reset = Layout(Schedule.RESET, 128)
    assert not reset.valid_count(1000, 0)
    assert not reset.valid_count(1000, 7)  # 143 tokens per stream: over n_ctx
    assert reset.valid_count(1000, 8)
    assert not reset.valid_count(3, 4)  # an empty stream
    assert Layout(Schedule.SLIDE, 128).valid_count(1000, 1)


def test_a_full_engine_queue_is_refused_with_a_retry_hint() -> None:
    """Jobs waiting for a slot count against `queue_size` (no lane runs here, so both wait)."""
    engine = CodingEngine(None, ContextKey(4, 1, 64), queue_size=1)
    work = [StreamWork(StreamEvaluator([1, 2, 3]), IdentityRowModel(), 3)]
    first = engine.submit(work, engine.key, Schedule.RESET)
    with pytest.raises(Overloaded) as refused:
        engine.submit(work, engine.key, Schedule.RESET)
    assert refused.value.retry_after > 0
    assert "queue_size=1" in str(refused.value)
    assert engine.queue_depth == 1
    engine.close()
    assert isinstance(first.exception(), BackendError)
