"""The blocking client: unary calls with deadline-bounded retries; a lazy BatchCompress stream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc

from ._errors import LLMCompressError, from_rpc_error
from ._options import TLS, Deadline, RetryPolicy, bearer_metadata
from ._results import (
    BatchResult,
    CompressResult,
    Mode,
    ReconstructResult,
    ServerStats,
    mode_to_pb,
)
from ._stream import ItemLike, ProgressCallback, StreamDefaults, StreamRun

log = logging.getLogger("llmcompress")
DEFAULT_TARGET = "127.0.0.1:50051"
T = TypeVar("T")


def compress_request(
    text: str,
    mode: Mode | str,
    verify: bool | None,
    target_ratio: float | None,
    evaluate_quality: bool,
) -> pb.CompressRequest:
    req = pb.CompressRequest(text=text, mode=mode_to_pb(mode), evaluate_quality=evaluate_quality)
    if verify is not None:
        req.verify = verify
    if target_ratio is not None:
        req.target_ratio = target_ratio
    return req


def channel_options(tls: TLS | None, max_message_bytes: int) -> list[tuple[str, str | int]]:
    opts: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if tls is not None:
        opts.extend(tls.channel_options())
    return opts


class Client:
    """Blocking client for CompressionService.

    `timeout` is each unary call's deadline in seconds, retries included;
    `tls` switches to a TLS channel (mutual with a client certificate); `token`
    is sent as `authorization: Bearer <token>`; `retry` retries UNAVAILABLE and
    RESOURCE_EXHAUSTED with backoff (pass `RetryPolicy(max_attempts=1)` to turn
    it off)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 300.0,
        tls: TLS | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = bearer_metadata(token)
        options = channel_options(tls, max_message_bytes)
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self._stub = pb_grpc.CompressionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, rpc: Callable[[float | None], T], timeout: float | None) -> tuple[T, int]:
        deadline = Deadline(self.timeout if timeout is None else timeout)
        attempt = 1
        while True:
            try:
                return rpc(deadline.remaining()), attempt
            except grpc.RpcError as err:
                error = from_rpc_error(err)
            wait = self.retry.backoff(error, attempt, deadline)
            if wait is None:
                raise error
            log.info("%s; retry %d in %.2fs", error, attempt, wait)
            time.sleep(wait)
            attempt += 1

    def compress(
        self,
        text: str,
        mode: Mode | str = Mode.DEFAULT,
        *,
        verify: bool | None = None,
        target_ratio: float | None = None,
        evaluate_quality: bool = False,
        timeout: float | None = None,
    ) -> CompressResult:
        """Compress one text; `verify` and `target_ratio` left None take the server's defaults."""
        req = compress_request(text, mode, verify, target_ratio, evaluate_quality)
        resp, attempts = self._call(
            lambda t: self._stub.Compress(req, timeout=t, metadata=self._metadata), timeout
        )
        return CompressResult.from_pb(resp, attempts)

    def reconstruct(
        self, envelope: bytes, *, evaluate_quality: bool = False, timeout: float | None = None
    ) -> ReconstructResult:
        """The text held in an envelope (exact for ZSTD and LOSSLESS)."""
        req = pb.ReconstructRequest(envelope=envelope, evaluate_quality=evaluate_quality)
        resp, attempts = self._call(
            lambda t: self._stub.Reconstruct(req, timeout=t, metadata=self._metadata), timeout
        )
        return ReconstructResult.from_pb(resp, attempts)

    def stats(self, window_seconds: float = 0.0, *, timeout: float | None = None) -> ServerStats:
        """The server's recent per-stage latency, slowest stage and cache statistics."""
        req = pb.GetStatsRequest(window_seconds=window_seconds)
        resp, _ = self._call(
            lambda t: self._stub.GetStats(req, timeout=t, metadata=self._metadata), timeout
        )
        return ServerStats.from_pb(resp)

    def compress_stream(
        self,
        items: Iterable[ItemLike],
        *,
        mode: Mode | str = Mode.DEFAULT,
        verify: bool | None = None,
        target_ratio: float | None = None,
        evaluate_quality: bool = False,
        in_order: bool = False,
        on_progress: ProgressCallback | None = None,
        max_in_flight: int = 512,
        timeout: float | None = None,
    ) -> Iterator[BatchResult]:
        """Compress `(id, text)` pairs or `BatchItem`s through BatchCompress.

        Items are read from `items` only while fewer than `max_in_flight` are
        unanswered, so memory stays flat for any length. Results come as items finish (in
        input order with `in_order=True`); a failed item is a `BatchResult`
        with `error` set, and the stream goes on. `timeout` bounds the whole
        stream (default: none). A stream cut by UNAVAILABLE or
        RESOURCE_EXHAUSTED is reopened and the unanswered items sent again.
        """
        defaults = StreamDefaults(mode, verify, target_ratio, evaluate_quality, in_order)
        run = StreamRun(defaults, self.retry, timeout, on_progress, max_in_flight)
        state = run.state
        source = iter(items)
        generation = [0]
        pulling = threading.Lock()

        def requests(
            gen: int, replay: list[pb.BatchCompressRequest]
        ) -> Iterator[pb.BatchCompressRequest]:
            yield from replay
            while state.wait_for_room(lambda: generation[0] == gen):
                with pulling:
                    # A stream that ended stops pulling, so no item goes to a dead call.
                    if generation[0] != gen or state.exhausted:
                        return
                    try:
                        req = defaults.request(next(source))
                    except StopIteration:
                        state.exhausted = True
                        return
                    except BaseException as exc:  # re-raised to the caller below
                        state.source_error, state.exhausted = exc, True
                        return
                    state.mark_sent(req)
                yield req

        replay: list[pb.BatchCompressRequest] = []
        while True:
            call = self._stub.BatchCompress(
                requests(generation[0], replay),
                timeout=run.deadline.remaining(),
                metadata=self._metadata,
            )
            try:
                for resp in call:
                    yield run.answer(resp)
                break
            except grpc.RpcError as err:
                error: LLMCompressError = from_rpc_error(err)
            finally:
                # Done, failed or abandoned by the caller: stop this call's sender,
                # which may be waiting for room that will never come.
                call.cancel()  # type: ignore[no-untyped-call]
                generation[0] += 1
                state.wake()
            time.sleep(run.backoff(error))
            with pulling:  # an item being pulled by the old sender is pending once it has it
                replay = state.unanswered()
        run.finish()
