"""The Python client against the real server: round trips, deadlines, retries,
a 10,000-item stream in flat memory, and the public surface."""

from __future__ import annotations

import asyncio
import datetime
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

import llmcompress
from llmcompress import (
    AsyncClient,
    BatchItem,
    BatchResult,
    Client,
    CompressResult,
    DeadlineExceeded,
    InvalidArgument,
    Mode,
    Progress,
    ResourceExhausted,
    RetryPolicy,
    ServerStats,
    Unavailable,
)
from llmcompress._errors import from_rpc_error, from_status, retry_hint
from llmcompress_server.api.server import App

from .conftest import ROOT, SimFactory, StartServer, semantic_server, slow_text

TEXT = "The envelope is everything: it holds every byte Reconstruct needs. " * 12


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(llmcompress).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(llmcompress.__all__) == public
    assert len(llmcompress.__all__) == len(set(llmcompress.__all__))
    assert not [name for name in llmcompress.__all__ if name.startswith("_")]
    for name in llmcompress.__all__:
        # Everything exported is defined in the package's own private modules.
        module = getattr(getattr(llmcompress, name), "__module__", "llmcompress")
        assert module.startswith("llmcompress"), (name, module)
    assert (ROOT / "client" / "llmcompress" / "py.typed").is_file()


async def test_sync_round_trip(server: App) -> None:
    def run() -> tuple[CompressResult, str, bool, ServerStats]:
        with Client(server.address, timeout=30) as client:
            result = client.compress(TEXT, Mode.ZSTD)
            back = client.reconstruct(result.envelope)
            return result, back.text, back.exact, client.stats()

    result, text, exact, stats = await asyncio.to_thread(run)
    assert (text, exact) == (TEXT, True)
    assert result.mode is Mode.ZSTD and result.stats.requested_mode is Mode.ZSTD
    assert result.stats.original_bytes == len(TEXT.encode())
    assert result.stats.compressed_bytes == len(result.envelope)
    assert result.ratio == pytest.approx(len(TEXT.encode()) / len(result.envelope))
    stages = [s.stage for s in result.stats.stages]
    core = [stage for stage in stages if stage in {"validate", "zstd.encode", "pack"}]
    assert core == ["validate", "zstd.encode", "pack"], stages  # in order, among others
    assert not result.degraded and result.quality is None and result.attempts == 1
    assert {"zstd.encode", "zstd.decode"} <= {s.stage for s in stats.stages}


async def test_async_round_trip(server: App) -> None:
    async with AsyncClient(server.address, timeout=30) as client:
        result = await client.compress(TEXT, "zstd")
        back = await client.reconstruct(result.envelope)
        assert (back.text, back.exact, back.mode) == (TEXT, True, Mode.ZSTD)
        assert result.ratio > 1
        with pytest.raises(InvalidArgument) as info:
            await client.compress("text", Mode.ZSTD, target_ratio=0.5)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "target_ratio" in info.value.details


async def test_deadline_exceeded(start_server: StartServer, sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=60.0)  # each model call takes a minute
    app = await semantic_server(start_server, sim.url)
    async with AsyncClient(app.address, retry=RetryPolicy()) as client:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            await client.compress(TEXT, Mode.SEMANTIC, timeout=0.2)
        elapsed = time.monotonic() - t0
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The client gave up at its deadline instead of waiting a minute for the server (or
    # retrying); ten times what an idle machine needs, for a loaded one.
    assert elapsed < 10.0


async def test_unreachable_server_is_unavailable_after_bounded_retries() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.05, jitter=0.0)
    async with AsyncClient("127.0.0.1:9", timeout=60, retry=policy) as client:
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await client.compress("hello", Mode.ZSTD)
    # The error says it all: its traceback carries no chained grpc exception.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # Two waits (0.05 s + 0.1 s) between three attempts: it stopped after max_attempts,
    # long before the 60 s deadline (the upper bound leaves a loaded machine 10x slack).
    assert 0.15 <= time.monotonic() - t0 < 40


async def _occupy_the_only_slot(app: App) -> asyncio.Task[CompressResult]:
    slow = AsyncClient(app.address, timeout=60, retry=RetryPolicy(max_attempts=1))
    task = asyncio.create_task(slow.compress(slow_text(1_500_000), Mode.ZSTD))
    task.add_done_callback(lambda _: asyncio.ensure_future(slow.close()))
    for _ in range(500):
        if app.pipeline.admission.active == 1:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the slow call never reached the server")


async def test_retry_after_resource_exhausted(start_server: StartServer) -> None:
    app = await start_server(performance={"max_queue": 1})
    slow = await _occupy_the_only_slot(app)
    # Without retries the second call is refused at once, with the server's hint.
    async with AsyncClient(app.address, retry=RetryPolicy(max_attempts=1)) as once:
        with pytest.raises(ResourceExhausted) as info:
            await once.compress(TEXT, Mode.ZSTD)
    assert info.value.retry_after == pytest.approx(0.5)
    assert "performance.max_queue" in info.value.details
    # With retries it waits out the slow call and succeeds.
    policy = RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=1.0)
    async with AsyncClient(app.address, timeout=60, retry=policy) as client:
        result = await client.compress(TEXT, Mode.ZSTD)
    assert result.attempts >= 2
    assert result.stats.original_bytes == len(TEXT.encode())
    await slow


async def test_sync_client_retries_resource_exhausted(start_server: StartServer) -> None:
    app = await start_server(performance={"max_queue": 1})
    slow = await _occupy_the_only_slot(app)
    policy = RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=1.0)

    def run() -> CompressResult:
        with Client(app.address, timeout=60, retry=policy) as client:
            return client.compress(TEXT, Mode.ZSTD)

    result = await asyncio.to_thread(run)
    assert result.attempts >= 2
    await slow


def test_retry_hint_is_read_from_retry_info_or_the_plain_trailer() -> None:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(datetime.timedelta(milliseconds=1250))
    status = status_pb2.Status(code=8, message="full")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    blob = status.SerializeToString()
    assert retry_hint([("grpc-status-details-bin", blob)]) == pytest.approx(1.25)
    assert retry_hint([("retry-after-ms", "300")]) == pytest.approx(0.3)
    # RetryInfo wins over the plain trailer; garbage in either is ignored.
    assert retry_hint([("retry-after-ms", "300"), ("grpc-status-details-bin", blob)]) == 1.25
    assert retry_hint([("retry-after-ms", "soon"), ("grpc-status-details-bin", b"\xff")]) is None
    error = from_status(status)
    assert isinstance(error, ResourceExhausted) and error.retry_after == pytest.approx(1.25)


def test_retry_policy_backoff_grows_is_capped_and_honours_the_hint() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2, max_backoff=1.0, jitter=0.0)
    assert [policy.delay(n, None) for n in (1, 2, 3, 5, 9)] == pytest.approx(
        [0.1, 0.2, 0.4, 1.0, 1.0]
    )
    assert policy.delay(1, 0.5) == pytest.approx(0.5)
    jittered = RetryPolicy(jitter=0.2)
    draws = [jittered.delay(1, 0.5) for _ in range(200)]
    assert min(draws) >= 0.5 and max(draws) <= 0.6 + 1e-9 and len(set(draws)) > 1


async def test_stream_per_item_errors_order_and_progress(start_server: StartServer) -> None:
    app = await start_server(compression={"max_text_bytes": 1000})
    items: list[BatchItem | tuple[str, str]] = [(f"ok-{i}", f"item {i} " * 20) for i in range(30)]
    items[7] = ("too-big", "x" * 1001)
    items[20] = BatchItem("bad-ratio", "text", target_ratio=0.5)
    seen: list[Progress] = []
    async with AsyncClient(app.address) as client:
        answers = [
            a
            async for a in client.compress_stream(
                iter(items), mode=Mode.ZSTD, in_order=True, on_progress=seen.append
            )
        ]
    ids = [i.id if isinstance(i, BatchItem) else i[0] for i in items]
    assert [a.id for a in answers] == ids  # in input order, each id once
    failed = {a.id: a.error for a in answers if not a.ok}
    assert set(failed) == {"too-big", "bad-ratio"}
    assert isinstance(failed["too-big"], InvalidArgument)
    assert "max_text_bytes" in failed["too-big"].details
    assert all(a.result is not None and a.result.mode is Mode.ZSTD for a in answers if a.ok)
    assert (seen[-1].done, seen[-1].errors, seen[-1].sent) == (30, 2, 30)
    assert seen[-1].ratio > 1


async def test_stream_source_error_surfaces_after_the_sent_items(server: App) -> None:
    def items() -> Iterator[tuple[str, str]]:
        yield ("a", "first")
        yield ("b", "second")
        raise ValueError("corpus line 3 is broken")

    got: list[BatchResult] = []

    async def collect(client: AsyncClient) -> None:
        async for answer in client.compress_stream(items(), mode=Mode.ZSTD):
            got.append(answer)

    async with AsyncClient(server.address) as client:
        with pytest.raises(ValueError, match="line 3"):
            await collect(client)
    # The items sent before the broken one were still answered.
    assert sorted(a.id for a in got) == ["a", "b"]


# The client runs in its own process so tracemalloc sees only the client.
STREAM_PROBE = r"""
import sys, tracemalloc
from llmcompress import Client, Mode

N = 10_000
seen = bytearray(N)  # allocated before tracing starts
marks = {}

def items():
    for i in range(N):
        # ~0.9 KB each: the 10,000 items are ~9 MB, so holding them would show.
        yield (str(i), f"record {i}: user {i % 97} said the build on branch {i % 13} passed. " * 12)

ahead = 0
def on_progress(p):
    global ahead
    ahead = max(ahead, p.sent - p.done)
    if p.done in (1_000, N):
        marks[p.done] = tracemalloc.get_traced_memory()[0]

with Client(sys.argv[1], timeout=120) as client:
    tracemalloc.start()
    errors = 0
    for answer in client.compress_stream(items(), mode=Mode.ZSTD, on_progress=on_progress):
        seen[int(answer.id)] += 1
        errors += not answer.ok
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(N, sum(seen), max(seen), min(seen), errors, ahead, marks[1_000], marks[N], peak)
"""


async def test_stream_of_10000_items_keeps_client_memory_flat(server: App) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STREAM_PROBE,
        server.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0, err.decode()
    n, total, most, least, errors, ahead, at_1k, at_10k, peak = map(int, out.split())
    # Every id answered exactly once, none failed.
    assert (total, most, least, errors) == (n, 1, 1, 0)
    # Lazy: the generator was never read more than max_in_flight (512) ahead.
    assert 0 < ahead <= 512
    # Flat: 9,000 more items after the first 1,000 leave traced memory where it was,
    # and the peak is a fraction of the ~9 MB of input. Measured here: peak ~0.5 MB
    # lazily, ~9 MB when the same items are passed as a list.
    assert at_10k - at_1k < 256 * 1024, (at_1k, at_10k)
    assert peak < 2 * 1024 * 1024, peak


async def test_stream_reopens_after_the_server_restarts(start_server: StartServer) -> None:
    first = await start_server()

    async def items() -> AsyncIterator[tuple[str, str]]:
        for i in range(400):
            yield (str(i), f"item {i} of a stream that outlives its server " * 8)

    answered: list[str] = []
    second: App | None = None
    policy = RetryPolicy(max_attempts=40, initial_backoff=0.1, max_backoff=0.5)
    async with AsyncClient(first.address, retry=policy) as client:
        stream = client.compress_stream(items(), mode=Mode.ZSTD, max_in_flight=50)
        async for answer in stream:
            assert answer.ok, answer.error
            answered.append(answer.id)
            if len(answered) == 100:
                # Items in flight now are lost with the server; the client sends them again.
                await first.stop(grace=0)
                second = await start_server(server={"port": first.port})
    assert second is not None
    assert sorted(answered, key=int) == [str(i) for i in range(400)]
    # The second server did the rest: the 300 items after the restart, less the
    # answers the first one had already sent, plus the in-flight items sent again.
    served = {s.stage: s.count for s in second.stages.summary()}
    assert 250 <= served["validate"] <= 350


async def test_sync_stream_reopens_after_the_server_restarts(start_server: StartServer) -> None:
    first = await start_server()
    loop = asyncio.get_running_loop()

    async def restart() -> App:
        await first.stop(grace=0)
        return await start_server(server={"port": first.port})

    def run() -> list[str]:
        answered: list[str] = []
        policy = RetryPolicy(max_attempts=40, initial_backoff=0.1, max_backoff=0.5)
        items = ((str(i), f"sync item {i} " * 10) for i in range(400))
        with Client(first.address, retry=policy) as client:
            for answer in client.compress_stream(items, mode=Mode.ZSTD, max_in_flight=50):
                assert answer.ok, answer.error
                answered.append(answer.id)
                if len(answered) == 100:
                    asyncio.run_coroutine_threadsafe(restart(), loop).result(30)
        return answered

    answered = await asyncio.to_thread(run)
    assert sorted(answered, key=int) == [str(i) for i in range(400)]


async def test_leaving_a_sync_stream_early_stops_reading_the_input(server: App) -> None:
    pulled = 0

    def items() -> Iterator[tuple[str, str]]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield (str(i), "x" * 100)

    def run() -> int:
        with Client(server.address) as client:
            for n, _ in enumerate(client.compress_stream(items(), mode=Mode.ZSTD), 1):
                if n == 20:
                    break
        return threading.active_count()

    threads_before = threading.active_count()
    threads_after = await asyncio.to_thread(run)
    at_exit = pulled
    await asyncio.sleep(0.5)
    assert pulled == at_exit <= 20 + 512 + 1  # read no further than max_in_flight ahead
    # The sender thread waiting for room was woken and ended with the call.
    for _ in range(100):
        if threading.active_count() <= threads_before:
            break
        await asyncio.sleep(0.05)
    assert threading.active_count() <= threads_before, threads_after


async def test_a_message_size_limit_is_not_retried(server: App) -> None:
    # grpc reports an oversized message as RESOURCE_EXHAUSTED too; waiting cannot fix it.
    policy = RetryPolicy(max_attempts=5, initial_backoff=5.0, max_backoff=10.0, jitter=0.0)
    async with AsyncClient(server.address, retry=policy, max_message_bytes=1024) as client:
        t0 = time.monotonic()
        with pytest.raises(ResourceExhausted) as info:
            await client.compress("z" * 2048, Mode.ZSTD)
    assert not info.value.retryable
    # No backoff was slept: retries would sleep 5 + 10 + 10 + 10 s (10x slack for load).
    assert time.monotonic() - t0 < 10.0


@pytest.mark.parametrize(
    ("code", "details", "retryable"),
    [
        # grpc.aio's status for a write on a call whose connection just broke (a replica
        # killed mid-stream): local, so the stream reopens instead of failing the run.
        (grpc.StatusCode.INTERNAL, "Internal error from Core", True),
        (grpc.StatusCode.INTERNAL, "the engine failed: out of memory", False),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", True),
        (grpc.StatusCode.INVALID_ARGUMENT, "text is empty", False),
    ],
)
def test_which_rpc_failures_are_retried(
    code: grpc.StatusCode, details: str, retryable: bool
) -> None:
    err = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    assert from_rpc_error(err).retryable is retryable
