"""BatchRunner flow control: the window bounds what is read, every id is answered once,
failures stay per item, ordered mode, cancellation, and the stream deadline."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.core.deadline import remaining
from llmcompress_server.core.domain import CompressCommand, CompressOutcome, Mode
from llmcompress_server.core.errors import BackendUnavailable, InvalidInput
from llmcompress_server.flow.batch import BatchRunner


def outcome(cmd: CompressCommand) -> CompressOutcome:
    return CompressOutcome(
        envelope=cmd.text.encode(), original_bytes=len(cmd.text), requested_mode=Mode.ZSTD,
        mode=Mode.ZSTD,
    )  # fmt: skip


class Source:
    """A request stream that records how far ahead of the answers the runner reads."""

    def __init__(self, n: int, in_order: bool = False) -> None:
        self.n = n
        self.in_order = in_order
        self.pulled = 0
        self.answered = 0
        self.max_ahead = 0

    async def __aiter__(self) -> AsyncIterator[pb.BatchCompressRequest]:
        for i in range(self.n):
            self.pulled += 1
            self.max_ahead = max(self.max_ahead, self.pulled - self.answered)
            yield pb.BatchCompressRequest(
                id=f"id-{i}",
                request=pb.CompressRequest(text=f"text {i}", mode=pb.MODE_ZSTD),
                in_order=self.in_order,
            )


async def drain(runner: BatchRunner, source: Source) -> list[pb.BatchCompressResponse]:
    answers = []
    async for response in runner.run(source.__aiter__()):
        source.answered += 1
        answers.append(response)
    return answers


async def test_window_bounds_items_read_ahead_of_answers() -> None:
    running = 0
    peak = 0

    async def compress(cmd: CompressCommand, group: object = None) -> CompressOutcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(random.uniform(0, 0.004))
        running -= 1
        return outcome(cmd)

    source = Source(400)
    answers = await drain(BatchRunner(compress, window=6), source)
    assert len(answers) == 400
    assert peak == 6  # the window is used ...
    assert source.max_ahead <= 6  # ... and nothing is read beyond it


async def test_every_id_answered_once_and_failures_stay_per_item() -> None:
    async def compress(cmd: CompressCommand, group: object = None) -> CompressOutcome:
        i = int(cmd.text.split()[1])
        await asyncio.sleep(0.001 * (i % 3))
        if i % 7 == 0:
            raise InvalidInput(f"bad item {i}")
        if i % 11 == 0:
            raise BackendUnavailable(f"backend down for {i}")
        if i == 50:
            raise RuntimeError("a bug")
        return outcome(cmd)

    answers = await drain(BatchRunner(compress, window=8), Source(200))
    ids = Counter(a.id for a in answers)
    assert set(ids) == {f"id-{i}" for i in range(200)} and set(ids.values()) == {1}
    codes = {a.id: a.error.code for a in answers if a.HasField("error")}
    assert codes["id-7"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert codes["id-11"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert codes["id-50"] == grpc.StatusCode.INTERNAL.value[0]
    assert sum(a.HasField("result") for a in answers) == 200 - len(codes)


async def test_in_order_mode_answers_in_request_order() -> None:
    async def compress(cmd: CompressCommand, group: object = None) -> CompressOutcome:
        await asyncio.sleep(random.uniform(0, 0.01))
        return outcome(cmd)

    source = Source(120, in_order=True)
    answers = await drain(BatchRunner(compress, window=5), source)
    assert [a.id for a in answers] == [f"id-{i}" for i in range(120)]
    assert source.max_ahead <= 5


async def test_closing_the_stream_cancels_every_item() -> None:
    started = 0
    live = 0
    window_full = asyncio.Event()

    async def compress(cmd: CompressCommand, group: object = None) -> CompressOutcome:
        nonlocal started, live
        started += 1
        live += 1
        if started == 4:
            window_full.set()
        try:
            await asyncio.sleep(30)
        finally:
            live -= 1
        return outcome(cmd)

    stream = BatchRunner(compress, window=4).run(Source(100).__aiter__())
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.wait_for(window_full.wait(), 5)
    first.cancel()  # the client went away while nothing was answered yet
    with pytest.raises(asyncio.CancelledError):
        await first
    await stream.aclose()
    assert started == 4 and live == 0


async def test_stream_deadline_reaches_every_item() -> None:
    seen: list[float | None] = []

    async def compress(cmd: CompressCommand, group: object = None) -> CompressOutcome:
        seen.append(remaining())
        return outcome(cmd)

    runner = BatchRunner(compress, window=4)
    answers = [a async for a in runner.run(Source(10).__aiter__(), time_remaining=5.0)]
    assert len(answers) == 10
    assert all(s is not None and 0 < s <= 5.0 for s in seen)
    no_deadline = [a async for a in runner.run(Source(3).__aiter__())]
    assert len(no_deadline) == 3 and seen[-1] is None
