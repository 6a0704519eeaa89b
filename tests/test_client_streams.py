"""`compress_stream(streams=K)`: K BatchCompress streams over one round_robin channel to
several real servers; a server stopped mid-run; each item answered exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from llmcompress import AsyncClient, Client, Mode, Progress, RetryPolicy, Unavailable
from llmcompress._stream import PULL, RESEND, StreamDefaults, StreamRun
from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.api.server import App
from llmcompress_server.codecs.semantic.grouping import Membership
from llmcompress_server.core.domain import CompressCommand

from .conftest import StartServer

POLICY = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.5)


def served(app: App) -> int:
    """Compress requests this server has handled (its own stage window)."""
    return sum(s.count for s in app.stages.summary() if s.stage == "validate")


def busy(app: App, seconds: float = 0.005) -> App:
    """`app`, answering each BatchCompress item `seconds` late: a busy replica, so a stream
    to it has items in flight when it stops (an idle one answers each as it arrives, and a
    stream can be empty at any moment)."""
    runner = app.batch
    assert runner is not None
    runner.compress_now = None  # every item takes the task path, where the delay is
    inner = runner.compress

    async def delayed(cmd: CompressCommand, *, group: Membership | None = None) -> Any:
        await asyncio.sleep(seconds)
        return await inner(cmd, group=group)

    runner.compress = delayed
    return app


def target(apps: list[App]) -> str:
    return "ipv4:" + ",".join(app.address for app in apps)


async def test_async_streams_spread_and_survive_a_stopped_server(
    start_server: StartServer,
) -> None:
    apps = [await start_server() for _ in range(3)]
    busy(apps[1])
    n, seen, answered = 2000, Counter[str](), list[int]()
    last: list[Progress] = []
    at_stop: list[int] = []
    async with AsyncClient(target(apps), retry=POLICY) as client:
        items = ((str(i), f"item {i} of three streams " * 30) for i in range(n))
        async for answer in client.compress_stream(
            items, mode=Mode.ZSTD, streams=3, in_order=True, on_progress=last.append
        ):
            assert answer.ok, answer.error
            seen[answer.id] += 1
            answered.append(int(answer.id))
            if len(answered) == 500:
                at_stop = [served(app) for app in apps]
                await apps[1].stop(grace=0)  # its stream breaks with items in flight
    assert all(count > 0 for count in at_stop), at_stop  # each server had a stream
    assert len(seen) == n and set(seen.values()) == {1}  # every id once
    assert answered == list(range(n))  # in input order across streams and re-sends
    assert last[-1].resent > 0 and last[-1].done == n


async def test_sync_streams_spread_and_survive_a_stopped_server(
    start_server: StartServer,
) -> None:
    apps = [await start_server() for _ in range(3)]
    busy(apps[2])
    loop = asyncio.get_running_loop()

    def run() -> tuple[Counter[str], list[int], Progress]:
        seen: Counter[str] = Counter()
        at_stop: list[int] = []
        progress: list[Progress] = []
        items = ((str(i), f"sync item {i} " * 40) for i in range(1500))
        with Client(target(apps), retry=POLICY) as client:
            for answer in client.compress_stream(
                items, mode=Mode.ZSTD, streams=3, on_progress=progress.append
            ):
                assert answer.ok, answer.error
                seen[answer.id] += 1
                if sum(seen.values()) == 400:
                    at_stop = [served(app) for app in apps]
                    asyncio.run_coroutine_threadsafe(apps[2].stop(grace=0), loop).result(30)
        return seen, at_stop, progress[-1]

    seen, at_stop, last = await asyncio.to_thread(run)
    assert all(count > 0 for count in at_stop), at_stop
    assert len(seen) == 1500 and set(seen.values()) == {1}
    assert last.resent > 0 and last.done == 1500


def _request(ident: str) -> pb.BatchCompressRequest:
    return pb.BatchCompressRequest(id=ident, request=pb.CompressRequest(text="t"))


def _answer(ident: str) -> pb.BatchCompressResponse:
    return pb.BatchCompressResponse(id=ident, error=status_pb2.Status(code=3, message="bad"))


def test_an_item_answered_on_two_streams_is_given_once() -> None:
    """Bookkeeping only (no server can be made to answer one send twice): an item sent on
    stream 0, which breaks, goes out again on stream 1; a late answer from stream 0's
    call and the answer from stream 1 reach the caller as one."""
    defaults = StreamDefaults(Mode.ZSTD, None, None, False, in_order=False)
    run = StreamRun(defaults, POLICY, None, None, max_in_flight=8, streams=2)
    first, second = run.lanes
    with run.lock:
        assert run.next_step(first, 0) == PULL
        run.add_new(first, 0, _request("x"))
    error = Unavailable(grpc.StatusCode.UNAVAILABLE, "connection reset")
    assert run.broke(first, error) is not None  # requeued, stream 0 reopens after a wait
    with run.lock:
        assert run.next_step(second, 0) == RESEND
        run.take_resend(second)
    assert [a.id for a in run.answer(second, _answer("x"))] == ["x"]
    assert run.answer(first, _answer("x")) == []  # the old call's late answer
    assert run.answer(second, _answer("x")) == []  # and a second one on the new call
    assert (run.done, run.resent, run.duplicates) == (1, 1, 2)


def test_streams_must_be_positive() -> None:
    defaults = StreamDefaults(Mode.ZSTD, None, None, False, False)
    with pytest.raises(ValueError, match="streams"):
        StreamRun(defaults, POLICY, None, None, max_in_flight=8, streams=0)
