"""The blocking client: unary calls with deadline-bounded retries; a lazy BatchCompress stream."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc

from llmcompress_proto.v1 import compression_pb2 as pb
from llmcompress_proto.v1 import compression_pb2_grpc as pb_grpc

from ._dictionaries import DictionaryInfo, training_requests
from ._errors import from_rpc_error
from ._options import TLS, Attempts, Deadline, RetryPolicy, bearer_metadata
from ._results import (
    BatchResult,
    CompressResult,
    Mode,
    ReconstructResult,
    ServerStats,
    mode_to_pb,
)
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

DEFAULT_TARGET = "127.0.0.1:50051"
T = TypeVar("T")


def compress_request(
    text: str,
    mode: Mode | str,
    verify: bool | None,
    target_ratio: float | None,
    evaluate_quality: bool,
    dictionary: str | None = None,
) -> pb.CompressRequest:
    req = pb.CompressRequest(
        text=text,
        mode=mode_to_pb(mode),
        evaluate_quality=evaluate_quality,
        dictionary=dictionary or "",
    )
    if verify is not None:
        req.verify = verify
    if target_ratio is not None:
        req.target_ratio = target_ratio
    return req


def channel_options(
    tls: TLS | None, max_message_bytes: int, load_balancing: str
) -> list[tuple[str, str | int]]:
    opts: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Over every address the target resolves to (several replicas behind a headless
        # Service, or `ipv4:h:p1,h:p2`): round_robin picks one per call, and so per stream.
        ("grpc.lb_policy_name", load_balancing),
    ]
    if tls is not None:
        opts.extend(tls.channel_options())
    return opts


class ClientSettings:
    """What the blocking and the asyncio client hold besides their channel."""

    def __init__(
        self, target: str, timeout: float | None, token: str | None, retry: RetryPolicy | None
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = bearer_metadata(token)

    def _attempts(self, timeout: float | None) -> Attempts:
        """A unary call's attempts: `timeout`, or the client's, bounds them all."""
        return Attempts(self.retry, self.timeout if timeout is None else timeout)


class Client(ClientSettings):
    """Blocking client for CompressionService.

    `timeout` is each unary call's deadline in seconds, retries included;
    `tls` switches to a TLS channel (mutual with a client certificate); `token`
    is sent as `authorization: Bearer <token>`; `retry` retries UNAVAILABLE and
    RESOURCE_EXHAUSTED with backoff (pass `RetryPolicy(max_attempts=1)` to turn
    it off). `target` may name several replicas (`ipv4:10.0.0.1:50051,10.0.0.2:50051`,
    or `dns:///name:50051` resolving to several addresses); `load_balancing` is the
    gRPC policy over them: `round_robin` (each call, and each stream, to the next
    connected replica; one that dies is skipped) or `pick_first` (one connection)."""

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
        attempts = self._attempts(timeout)
        while True:
            try:
                return rpc(attempts.deadline.remaining()), attempts.number
            except grpc.RpcError as err:
                time.sleep(attempts.failed(err))

    def compress(
        self,
        text: str,
        mode: Mode | str = Mode.DEFAULT,
        *,
        verify: bool | None = None,
        target_ratio: float | None = None,
        evaluate_quality: bool = False,
        dictionary: str | None = None,
        timeout: float | None = None,
    ) -> CompressResult:
        """Compress one text; `verify` and `target_ratio` left None take the server's defaults;
        `dictionary` names a corpus dictionary (by name or id) to code it with."""
        req = compress_request(text, mode, verify, target_ratio, evaluate_quality, dictionary)
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

    def train_dictionary(
        self,
        name: str,
        samples: Iterable[str],
        *,
        zstd_bytes: int = 0,
        on_sample: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> DictionaryInfo:
        """Train a corpus dictionary on `samples` (texts of one kind) and store it under
        `name`; `on_sample(bytes)` is called as each sample is sent. Not retried: the
        samples are read once."""
        requests = training_requests(name, samples, zstd_bytes, on_sample)
        try:
            resp = self._stub.TrainDictionary(
                requests,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return DictionaryInfo.from_pb(resp.dictionary)

    def import_dictionary(
        self, data: bytes, *, name: str = "", timeout: float | None = None
    ) -> DictionaryInfo:
        """Store an exported dictionary file (`name`: instead of the one it carries)."""
        req = pb.ImportDictionaryRequest(file=data, name=name)
        resp, _ = self._call(
            lambda t: self._stub.ImportDictionary(req, timeout=t, metadata=self._metadata),
            timeout,
        )
        return DictionaryInfo.from_pb(resp.dictionary)

    def export_dictionary(
        self, dictionary: str, *, timeout: float | None = None
    ) -> tuple[bytes, DictionaryInfo]:
        """A dictionary (by name or id) as one file any server can import."""
        req = pb.ExportDictionaryRequest(dictionary=dictionary)
        resp, _ = self._call(
            lambda t: self._stub.ExportDictionary(req, timeout=t, metadata=self._metadata),
            timeout,
        )
        return resp.file, DictionaryInfo.from_pb(resp.info)

    def list_dictionaries(self, *, timeout: float | None = None) -> list[DictionaryInfo]:
        """Every dictionary the server (and its Redis) holds, newest first."""
        req = pb.ListDictionariesRequest()
        resp, _ = self._call(
            lambda t: self._stub.ListDictionaries(req, timeout=t, metadata=self._metadata),
            timeout,
        )
        return [DictionaryInfo.from_pb(d) for d in resp.dictionaries]

    def delete_dictionary(self, dictionary: str, *, timeout: float | None = None) -> DictionaryInfo:
        """Delete a dictionary (by name or id) and its names. Envelopes coded with it can no
        longer be reconstructed by that server: export it first if any are kept."""
        req = pb.DeleteDictionaryRequest(dictionary=dictionary)
        resp, _ = self._call(
            lambda t: self._stub.DeleteDictionary(req, timeout=t, metadata=self._metadata),
            timeout,
        )
        return DictionaryInfo.from_pb(resp.deleted)

    def stats(self, window_seconds: float = 0.0, *, timeout: float | None = None) -> ServerStats:
        """The server's recent per-stage latency, slowest stage and cache statistics."""
        req = pb.GetStatsRequest(window_seconds=window_seconds)
        resp, _ = self._call(
            lambda t: self._stub.GetStats(req, timeout=t, metadata=self._metadata), timeout
        )
        return ServerStats.from_pb(resp)

    def _connect_everywhere(self, deadline: Deadline) -> None:
        """Give the channel time to connect to every address of the target, so that streams
        opened together are spread over all of them (see `SPREAD_SETTLE_SECONDS`)."""
        wait = min(CONNECT_WAIT_SECONDS, deadline.remaining() or CONNECT_WAIT_SECONDS)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=wait)
        except grpc.FutureTimeoutError:
            return  # no replica answers yet: the streams' own retries take over
        time.sleep(SPREAD_SETTLE_SECONDS)

    def compress_stream(
        self,
        items: Iterable[ItemLike],
        *,
        mode: Mode | str = Mode.DEFAULT,
        verify: bool | None = None,
        target_ratio: float | None = None,
        evaluate_quality: bool = False,
        in_order: bool = False,
        dictionary: str | None = None,
        on_progress: ProgressCallback | None = None,
        max_in_flight: int = 512,
        timeout: float | None = None,
        streams: int = 1,
    ) -> Iterator[BatchResult]:
        """Compress `(id, text)` pairs or `BatchItem`s through BatchCompress.

        Items are read from `items` only while fewer than `max_in_flight` are
        unanswered, so memory stays flat for any length. Results come as items finish (in
        input order with `in_order=True`); a failed item is a `BatchResult`
        with `error` set, and the stream goes on. `timeout` bounds the whole
        run (default: none). `streams` opens that many BatchCompress streams at
        once; with a target of several replicas (`ipv4:h:p1,h:p2`, or a DNS name
        of several addresses) and round_robin balancing, they spread over them.
        A stream cut by UNAVAILABLE or RESOURCE_EXHAUSTED is reopened, and its
        unanswered items are sent again on whichever stream is free first; each
        item is answered once.
        """
        defaults = StreamDefaults(
            mode, verify, target_ratio, evaluate_quality, in_order, dictionary
        )
        run = StreamRun(defaults, self.retry, timeout, on_progress, max_in_flight, streams)
        source = iter(items)
        answers: queue.Queue[list[BatchResult] | BaseException | None] = queue.Queue()
        calls: dict[int, grpc.CallIterator[pb.BatchCompressResponse]] = {}

        def requests(lane: Lane, generation: int) -> Iterator[pb.BatchCompressRequest]:
            # Runs on grpc's thread for this call; the input is read here, lazily.
            while True:
                with run.changed:
                    step = run.next_step(lane, generation)
                    while step == WAIT:
                        run.changed.wait()
                        step = run.next_step(lane, generation)
                    if step == STOP:
                        return
                    if step == RESEND:
                        resent = run.take_resend(lane)
                if step == RESEND:
                    yield resent.req
                    continue
                try:
                    req = defaults.request(next(source))
                except StopIteration:
                    req = None
                except BaseException as exc:  # re-raised to the caller once the rest is answered
                    with run.lock:
                        run.input_failed(exc)
                    return
                with run.lock:
                    item = run.add_new(lane, generation, req)
                if item is not None:
                    yield item.req
                elif req is not None:
                    return  # this call ended meanwhile; the item waits for the next one

        def serve(lane: Lane) -> None:
            """One stream: open, read answers, reopen after a break, until all are answered."""
            while not run.closed:
                call = self._stub.BatchCompress(
                    requests(lane, lane.generation),
                    timeout=run.deadline.remaining(),
                    metadata=self._metadata,
                )
                calls[lane.index] = call
                try:
                    for resp in call:
                        if ready := run.answer(lane, resp):
                            answers.put(ready)
                    error = run.ended(lane)
                except grpc.RpcError as err:
                    error = from_rpc_error(err)
                finally:
                    # Done or failed: stop this call's sender, which may wait for room.
                    call.cancel()  # type: ignore[no-untyped-call]
                if error is None or run.closed:
                    return
                wait = run.broke(lane, error)
                if wait is None:
                    if run.last_lane():
                        answers.put(error)
                    return
                run.stopped.wait(wait)

        def lane_thread(lane: Lane) -> None:
            try:
                serve(lane)
            except BaseException as exc:  # handed to the caller's thread
                answers.put(exc)
            finally:
                answers.put(None)

        if streams > 1:
            self._connect_everywhere(run.deadline)
        threads = [
            threading.Thread(target=lane_thread, args=(lane,), name=f"llmc-stream-{lane.index}")
            for lane in run.lanes
        ]
        for thread in threads:
            thread.start()
        try:
            running = len(threads)
            while running:
                got = answers.get()
                if got is None:
                    running -= 1
                elif isinstance(got, BaseException):
                    raise got
                else:
                    run.consumed(len(got))
                    yield from got
            run.finish()
        finally:
            # Done, failed or abandoned by the caller: end every call and its threads.
            run.close()
            for call in list(calls.values()):
                call.cancel()  # type: ignore[no-untyped-call]
            for thread in threads:
                thread.join(timeout=5)
