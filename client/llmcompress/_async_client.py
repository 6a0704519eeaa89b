"""The asyncio client (grpc.aio): the same calls, options and retries as `Client`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from llmcompress_proto.v1 import compression_pb2 as pb
from llmcompress_proto.v1 import compression_pb2_grpc as pb_grpc

from ._client import DEFAULT_TARGET, ClientSettings, channel_options, compress_request
from ._dictionaries import DictionaryInfo, training_requests
from ._errors import from_rpc_error
from ._options import TLS, Deadline, RetryPolicy
from ._results import BatchResult, CompressResult, Mode, ReconstructResult, ServerStats
from ._stream import (
    CONNECT_WAIT_SECONDS,
    RESEND,
    SPREAD_SETTLE_SECONDS,
    STOP,
    WAIT,
    ItemLike,
    Lane,
    ProgressCallback,
    StreamDefaults,
    StreamRun,
)

T = TypeVar("T")


class AsyncClient(ClientSettings):
    """asyncio client for CompressionService; options as for `Client`.

    Use `async with AsyncClient(...) as client:` or call `await client.close()`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 300.0,
        tls: TLS | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        load_balancing: str = "round_robin",
    ) -> None:
        super().__init__(target, timeout, token, retry)
        options = channel_options(tls, max_message_bytes, load_balancing)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
        self._stub = pb_grpc.CompressionServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(
        self,
        rpc: Callable[[float | None], Awaitable[T]],
        timeout: float | None,  # noqa: ASYNC109 (a gRPC deadline, passed to each call)
    ) -> tuple[T, int]:
        attempts = self._attempts(timeout)
        while True:
            try:
                return await rpc(attempts.deadline.remaining()), attempts.number
            except grpc.RpcError as err:
                await asyncio.sleep(attempts.failed(err))

    async def compress(
        self,
        text: str,
        mode: Mode | str = Mode.DEFAULT,
        *,
        verify: bool | None = None,
        target_ratio: float | None = None,
        evaluate_quality: bool = False,
        dictionary: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> CompressResult:
        """Compress one text; `verify` and `target_ratio` left None take the server's defaults;
        `dictionary` names a corpus dictionary (by name or id) to code it with."""
        req = compress_request(text, mode, verify, target_ratio, evaluate_quality, dictionary)
        resp, attempts = await self._call(
            lambda t: self._stub.Compress(req, timeout=t, metadata=self._metadata), timeout
        )
        return CompressResult.from_pb(resp, attempts)

    async def reconstruct(
        self,
        envelope: bytes,
        *,
        evaluate_quality: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReconstructResult:
        """The text held in an envelope (exact for ZSTD and LOSSLESS)."""
        req = pb.ReconstructRequest(envelope=envelope, evaluate_quality=evaluate_quality)
        resp, attempts = await self._call(
            lambda t: self._stub.Reconstruct(req, timeout=t, metadata=self._metadata), timeout
        )
        return ReconstructResult.from_pb(resp, attempts)

    async def train_dictionary(
        self,
        name: str,
        samples: Iterable[str],
        *,
        zstd_bytes: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DictionaryInfo:
        """As `Client.train_dictionary`."""
        requests = training_requests(name, samples, zstd_bytes)
        try:
            resp = await self._stub.TrainDictionary(
                iter(requests),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return DictionaryInfo.from_pb(resp.dictionary)

    async def list_dictionaries(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[DictionaryInfo]:
        """As `Client.list_dictionaries`."""
        req = pb.ListDictionariesRequest()
        resp, _ = await self._call(
            lambda t: self._stub.ListDictionaries(req, timeout=t, metadata=self._metadata),
            timeout,
        )
        return [DictionaryInfo.from_pb(d) for d in resp.dictionaries]

    async def stats(
        self,
        window_seconds: float = 0.0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ServerStats:
        """The server's recent per-stage latency, slowest stage and cache statistics."""
        req = pb.GetStatsRequest(window_seconds=window_seconds)
        resp, _ = await self._call(
            lambda t: self._stub.GetStats(req, timeout=t, metadata=self._metadata), timeout
        )
        return ServerStats.from_pb(resp)

    async def _connect_everywhere(self, deadline: Deadline) -> None:
        """As `Client._connect_everywhere`."""
        wait = min(CONNECT_WAIT_SECONDS, deadline.remaining() or CONNECT_WAIT_SECONDS)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), wait)
        except TimeoutError:
            return  # no replica answers yet: the streams' own retries take over
        await asyncio.sleep(SPREAD_SETTLE_SECONDS)

    async def compress_stream(
        self,
        items: Iterable[ItemLike] | AsyncIterable[ItemLike],
        *,
        mode: Mode | str = Mode.DEFAULT,
        verify: bool | None = None,
        target_ratio: float | None = None,
        evaluate_quality: bool = False,
        in_order: bool = False,
        dictionary: str | None = None,
        on_progress: ProgressCallback | None = None,
        max_in_flight: int = 512,
        timeout: float | None = None,  # noqa: ASYNC109
        streams: int = 1,
    ) -> AsyncIterator[BatchResult]:
        """As `Client.compress_stream`; `items` may also be an async iterable."""
        defaults = StreamDefaults(
            mode, verify, target_ratio, evaluate_quality, in_order, dictionary
        )
        run = StreamRun(defaults, self.retry, timeout, on_progress, max_in_flight, streams)
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []

        def wake() -> None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            waiters.clear()

        run.on_change = wake  # always called on this loop: the async client has no threads

        async def changed() -> None:
            waiter = loop.create_future()
            waiters.append(waiter)
            await waiter

        # One reader task feeds a one-slot queue: a call being torn down can be
        # cancelled mid-wait without cancelling the caller's (async) iterator.
        slot: asyncio.Queue[pb.BatchCompressRequest | BaseException | None] = asyncio.Queue(
            maxsize=1
        )

        async def pump() -> None:
            try:
                if isinstance(items, AsyncIterable):
                    async for item in items:
                        await slot.put(defaults.request(item))
                else:
                    for item in items:
                        await slot.put(defaults.request(item))
            except Exception as exc:  # re-raised to the caller once the rest is answered
                await slot.put(exc)
                return
            await slot.put(None)

        async def requests(lane: Lane, generation: int) -> AsyncIterator[pb.BatchCompressRequest]:
            while True:
                with run.lock:
                    step = run.next_step(lane, generation)
                    resent = run.take_resend(lane) if step == RESEND else None
                if step == WAIT:
                    await changed()
                    continue
                if step == STOP:
                    return
                if resent is not None:
                    yield resent.req
                    continue
                try:
                    got = await slot.get()
                except BaseException:
                    with run.lock:  # cancelled while reading: let another sender read
                        run.pulling = False
                    wake()
                    raise
                if isinstance(got, BaseException):
                    with run.lock:
                        run.input_failed(got)
                    return
                with run.lock:
                    item = run.add_new(lane, generation, got)
                if item is not None:
                    yield item.req
                elif got is not None:
                    return  # this call ended meanwhile; the item waits for the next one

        async def serve(lane: Lane) -> None:
            """One stream: open, read answers, reopen after a break, until all are answered."""
            while not run.closed:
                call = self._stub.BatchCompress(
                    requests(lane, lane.generation),
                    timeout=run.deadline.remaining(),
                    metadata=self._metadata,
                )
                try:
                    async for resp in call:
                        if ready := run.answer(lane, resp):
                            answers.put_nowait(ready)
                    error = run.ended(lane)
                except grpc.RpcError as err:
                    error = from_rpc_error(err)
                finally:
                    call.cancel()
                if error is None or run.closed:
                    return
                wait = run.broke(lane, error)
                if wait is None:
                    if run.last_lane():
                        raise error
                    return
                await asyncio.sleep(wait)

        answers: asyncio.Queue[list[BatchResult] | BaseException | None] = asyncio.Queue()

        def lane_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                answers.put_nowait(task.exception())
            answers.put_nowait(None)

        if streams > 1:
            await self._connect_everywhere(run.deadline)
        reader = asyncio.create_task(pump())
        tasks = [asyncio.create_task(serve(lane)) for lane in run.lanes]
        for task in tasks:
            task.add_done_callback(lane_done)
        try:
            running = len(tasks)
            while running:
                got = await answers.get()
                if got is None:
                    running -= 1
                elif isinstance(got, BaseException):
                    raise got
                else:
                    run.consumed(len(got))
                    for answer in got:
                        yield answer
            run.finish()
        finally:
            run.close()
            for task in [*tasks, reader]:
                task.cancel()
            await asyncio.gather(*tasks, reader, return_exceptions=True)
