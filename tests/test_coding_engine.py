"""The coding engine on the real model: jobs entering at any step, cancels and failures
beside them, and every finished job decodes exactly.

CI-sized: short token runs at width 4 with one thread and 64 tokens per stream
context, so streams slide or split within a few dozen tokens. A step costs
~30 ms on a quiet machine, ~0.5 s on a loaded one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcompress_server.backends.embedded import default_model_path
from llmcompress_server.coding.engine import CodingEngine, ContextKey, StreamWork
from llmcompress_server.coding.layout import Layout, Schedule
from llmcompress_server.coding.rows import IdentityRowModel, StreamEncoder
from llmcompress_server.coding.text import decode_tokens, encode_tokens
from llmcompress_server.core.errors import DataLoss

pytestmark = pytest.mark.model

KEY = ContextKey(width=4, threads=1, n_ctx=64)
LANES = 2  # two engine threads share the jobs, as the default config runs
SLOTS = KEY.width * LANES
RESET = Layout(Schedule.RESET, KEY.n_ctx)
SLIDE = Layout(Schedule.SLIDE, KEY.n_ctx)


@pytest.fixture(scope="module")
def llama() -> Iterator[Any]:
    from llama_cpp import Llama

    model = Llama(model_path=str(default_model_path()), n_ctx=256, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def engine(llama: Any) -> Iterator[CodingEngine]:
    eng = CodingEngine(llama.model, KEY, lanes=LANES, queue_size=64)
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def texts(llama: Any, corpus: list[dict[str, str]]) -> list[list[int]]:
    """Token runs of 8 to 60 tokens from different corpus passages."""
    out = []
    for n, item in zip((60, 10, 40, 25, 50, 16, 30, 8), corpus[::20], strict=False):
        tokens = llama.tokenize(item["text"].encode(), add_bos=False, special=False)
        out.append(tokens[:n])
    return out


async def _round_trip(
    engine: CodingEngine, layout: Layout, tokens: Sequence[int], n_streams: int | None = None
) -> tuple[list[bytes], list[int]]:
    count = n_streams or layout.stream_count(len(tokens), SLOTS, min_stream=16)
    streams, _ = await encode_tokens(engine, KEY, layout, tokens, IdentityRowModel, count)
    back, _ = await decode_tokens(engine, KEY, layout, len(tokens), streams, IdentityRowModel)
    return streams, back


def _idle(engine: CodingEngine) -> bool:
    return engine.occupancy == 0 and engine.queue_depth == 0


async def test_staggered_jobs_of_different_lengths_round_trip_and_code_as_alone(
    engine: CodingEngine, texts: list[list[int]]
) -> None:
    alone = [(await _round_trip(engine, RESET, t))[0] for t in texts[:3]]

    async def later(delay: float, tokens: list[int]) -> tuple[list[bytes], list[int]]:
        await asyncio.sleep(delay)
        return await _round_trip(engine, RESET, tokens)

    results = await asyncio.gather(*(later(0.3 * i, t) for i, t in enumerate(texts)))
    for tokens, (_, back) in zip(texts, results, strict=True):
        assert back == tokens
    # Beside other jobs, at other slots and steps, the coded bytes do not change.
    assert [streams for streams, _ in results[:3]] == alone
    assert _idle(engine)


async def test_a_text_spanning_several_streams_and_slides(
    engine: CodingEngine, texts: list[list[int]]
) -> None:
    tokens = texts[0] + texts[4]  # 110 tokens
    streams, back = await _round_trip(engine, RESET, tokens, n_streams=8)
    assert len(streams) == 8 and back == tokens  # one round of both lanes' widths
    streams, back = await _round_trip(engine, SLIDE, tokens, n_streams=1)
    assert len(streams) == 1 and back == tokens  # slides at 64, 80 and 96 tokens


async def test_a_cancel_mid_job_frees_its_slots_and_the_others_finish_exactly(
    engine: CodingEngine, texts: list[list[int]]
) -> None:
    long_tokens = texts[0] * 10  # 600 tokens in each of the slots, sliding
    big = asyncio.ensure_future(  # noqa: RUF006 - cancelled below
        engine.run(
            [StreamWork(StreamEncoder(long_tokens), IdentityRowModel(), 600) for _ in range(SLOTS)],
            KEY,
            Schedule.SLIDE,
        )
    )
    start = engine.stats.steps
    while engine.occupancy < 1 or engine.stats.steps < start + 5:  # noqa: ASYNC110 - polls the engine thread
        await asyncio.sleep(0.05)
    rows_before = engine.stats.rows
    big.cancel()
    # Every slot was taken: this job gets one only because the cancel freed them.
    streams, back = await _round_trip(engine, RESET, texts[1])
    assert back == texts[1]
    assert big.cancelled()
    assert len(streams) == 1
    assert engine.stats.rows - rows_before < SLOTS * 600
    assert _idle(engine)


async def test_a_failing_job_does_not_stall_the_others(
    engine: CodingEngine, texts: list[list[int]]
) -> None:
    good, _ = await encode_tokens(engine, KEY, RESET, texts[2], IdentityRowModel, 2)
    damaged = [good[0][: len(good[0]) // 2], good[1]]
    bad = asyncio.ensure_future(
        decode_tokens(engine, KEY, RESET, len(texts[2]), damaged, IdentityRowModel)
    )
    other = asyncio.ensure_future(_round_trip(engine, RESET, texts[6]))
    with pytest.raises(DataLoss):
        await bad
    assert (await other)[1] == texts[6]
    assert _idle(engine)


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 7),  # which text
            st.floats(0, 1.0),  # arrival delay, s
            st.one_of(st.none(), st.floats(0, 1.5)),  # cancel after, s
            st.sampled_from([Schedule.RESET, Schedule.SLIDE]),
        ),
        min_size=2,
        max_size=6,
    )
)
async def test_random_arrivals_and_cancels_every_finished_job_decodes_exactly(
    engine: CodingEngine,
    texts: list[list[int]],
    plan: list[tuple[int, float, float | None, Schedule]],
) -> None:
    async def job(text: int, delay: float, schedule: Schedule) -> tuple[list[bytes], list[int]]:
        await asyncio.sleep(delay)
        layout = RESET if schedule is Schedule.RESET else SLIDE
        return await _round_trip(engine, layout, texts[text])

    tasks = [asyncio.ensure_future(job(t, d, s)) for t, d, _, s in plan]
    for task, (_, _, cancel_after, _) in zip(tasks, plan, strict=True):
        if cancel_after is not None:
            asyncio.get_running_loop().call_later(cancel_after, task.cancel)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)  # let the engine see the last cancels
    for task, (text, _, _, _) in zip(tasks, plan, strict=True):
        if not task.cancelled():
            assert task.result()[1] == texts[text]
    for _ in range(100):
        if _idle(engine):
            break
        await asyncio.sleep(0.05)
    assert _idle(engine)
