"""What both clients' `compress_stream` share: requests built lazily, answers matched to ids,
when to reopen a broken stream, and how it ends.

At most `max_in_flight` items are sent and not yet answered: HTTP/2 flow control
alone would let megabytes through (the server's receive window grows with its
bandwidth-delay probe), so the client bounds its own share. Memory stays flat
however long the input is. The unanswered items are what a reopened stream
sends again, so a broken connection loses none. The clients keep only what
differs: threads and blocking waits, or tasks and awaits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from llmcompress.v1 import compression_pb2 as pb

from ._errors import LLMCompressError, ServerError, from_status
from ._options import Deadline, RetryPolicy
from ._results import BatchItem, BatchResult, CompressResult, Mode, Progress, mode_to_pb

log = logging.getLogger("llmcompress")

ItemLike = BatchItem | tuple[str, str]
ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class StreamDefaults:
    mode: Mode | str
    verify: bool | None
    target_ratio: float | None
    evaluate_quality: bool
    in_order: bool

    def request(self, item: ItemLike) -> pb.BatchCompressRequest:
        if not isinstance(item, BatchItem):
            ident, text = item
            item = BatchItem(id=ident, text=text)
        req = pb.CompressRequest(
            text=item.text,
            mode=mode_to_pb(item.mode if item.mode is not None else self.mode),
            evaluate_quality=(
                item.evaluate_quality
                if item.evaluate_quality is not None
                else self.evaluate_quality
            ),
        )
        verify = item.verify if item.verify is not None else self.verify
        if verify is not None:
            req.verify = verify
        ratio = item.target_ratio if item.target_ratio is not None else self.target_ratio
        if ratio is not None:
            req.target_ratio = ratio
        # The server reads in_order from the first message; on every message it
        # stays right whichever item opens a retried stream.
        return pb.BatchCompressRequest(id=str(item.id), request=req, in_order=self.in_order)


class StreamState:
    """Sent-but-unanswered requests and running totals, shared by the sender and reader."""

    def __init__(self, on_progress: ProgressCallback | None, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        # The sync client's sender runs on grpc's thread, its reader on the caller's.
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        # id -> requests in send order (a repeated id is answered once per send).
        self.pending: OrderedDict[str, deque[pb.BatchCompressRequest]] = OrderedDict()
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.sent = self.done = self.errors = 0
        self.original_bytes = self.compressed_bytes = 0
        self.source_error: BaseException | None = None
        self.exhausted = False

    def mark_sent(self, req: pb.BatchCompressRequest) -> None:
        with self.lock:
            self.pending.setdefault(req.id, deque()).append(req)
            self.sent += 1

    def has_room(self) -> bool:
        return self.sent - self.done < self.max_in_flight

    def wait_for_room(self, current: Callable[[], bool]) -> bool:
        """Block until an item may be sent; False when this stream was abandoned."""
        with self.changed:
            self.changed.wait_for(lambda: self.has_room() or not current())
            return current()

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def unanswered(self) -> list[pb.BatchCompressRequest]:
        with self.lock:
            return [req for reqs in self.pending.values() for req in reqs]

    def answer(self, resp: pb.BatchCompressResponse) -> BatchResult:
        with self.lock:
            reqs = self.pending.get(resp.id)
            if reqs:
                reqs.popleft()
                if not reqs:
                    del self.pending[resp.id]
            self.done += 1
            self.changed.notify_all()
        if resp.WhichOneof("outcome") == "result":
            result = CompressResult.from_pb(resp.result)
            self.original_bytes += result.stats.original_bytes
            self.compressed_bytes += result.stats.compressed_bytes
            answer = BatchResult(resp.id, result=result)
        else:
            self.errors += 1
            answer = BatchResult(resp.id, error=from_status(resp.error))
        if self.on_progress is not None:
            self.on_progress(self.progress())
        return answer

    def progress(self) -> Progress:
        return Progress(
            sent=self.sent,
            done=self.done,
            errors=self.errors,
            original_bytes=self.original_bytes,
            compressed_bytes=self.compressed_bytes,
            elapsed_seconds=time.monotonic() - self.started,
        )


class StreamRun:
    """One `compress_stream` call: its state, its deadline, and its reopen decisions."""

    def __init__(
        self,
        defaults: StreamDefaults,
        retry: RetryPolicy,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        max_in_flight: int,
    ) -> None:
        self.defaults = defaults
        self.state = StreamState(on_progress, max_in_flight)
        self.retry = retry
        self.deadline = Deadline(timeout)
        self.attempt = 1

    def answer(self, resp: pb.BatchCompressResponse) -> BatchResult:
        self.attempt = 1  # progress: a later failure starts its backoff afresh
        return self.state.answer(resp)

    def backoff(self, error: LLMCompressError) -> float:
        """Seconds to wait before reopening the stream; raises `error` when it is final."""
        wait = self.retry.backoff(error, self.attempt, self.deadline)
        if wait is None:
            raise error
        log.info("stream: %s; reopening in %.2fs", error, wait)
        self.attempt += 1
        return wait

    def finish(self) -> None:
        """After the last answer: the caller's iterator failing, or items left unanswered,
        is an error too."""
        if self.state.source_error is not None:
            raise self.state.source_error
        if self.state.pending:
            raise ServerError(
                grpc.StatusCode.INTERNAL,
                f"the server closed the stream with {len(self.state.unanswered())} items "
                "unanswered; run the batch again (llmc batch --resume) to finish them",
            )
