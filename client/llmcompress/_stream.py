"""What both clients' `compress_stream` share: requests built lazily, spread over K
BatchCompress streams, answers matched to items, re-sending after a broken stream.

At most `max_in_flight` items are taken from the input and not yet handed to the
caller: HTTP/2 flow control alone would let megabytes through (the server's
receive window grows with its bandwidth-delay probe), so the client bounds its
own share and memory stays flat however long the input is. Each stream (a
`Lane`) remembers what it sent on its current call; when the call breaks (its
replica died, a restart, a refusal), those items go back to a shared queue that
every live stream sends from first, and the broken stream reopens after a
backoff. An item answered twice (once on a stream that broke, once after being
sent again) is given to the caller once. The clients keep only what differs:
threads and blocking waits, or tasks and awaits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from llmcompress_proto.v1 import compression_pb2 as pb

from ._errors import LLMCompressError, ServerError, from_status
from ._options import Deadline, RetryPolicy
from ._results import BatchItem, BatchResult, CompressResult, Mode, Progress, mode_to_pb

log = logging.getLogger("llmcompress")

ItemLike = BatchItem | tuple[str, str]
ProgressCallback = Callable[[Progress], None]
# Several streams open together once the channel is connected and has had this long to
# connect to every address of the target (a few ms each, measured here under load).
# round_robin picks among connected replicas and restarts its rotation at a random one
# whenever one connects, so streams opened earlier, or one at a time, share replicas.
SPREAD_SETTLE_SECONDS = 0.25
# The longest wait for a first connection before the streams open regardless (and retry).
CONNECT_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class StreamDefaults:
    mode: Mode | str
    verify: bool | None
    target_ratio: float | None
    evaluate_quality: bool
    in_order: bool
    dictionary: str | None = None

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
        dictionary = item.dictionary if item.dictionary is not None else self.dictionary
        if dictionary:
            req.dictionary = dictionary
        # Order is restored by the client (items move between streams); the server's
        # own in_order only keeps each stream's answers from racing far ahead.
        return pb.BatchCompressRequest(id=str(item.id), request=req, in_order=self.in_order)


class Item:
    """One input item: its place in the input, its request, and whether it was answered."""

    __slots__ = ("answered", "req", "resent", "seq")

    def __init__(self, seq: int, req: pb.BatchCompressRequest) -> None:
        self.seq = seq
        self.req = req
        self.answered = False
        self.resent = False


class Lane:
    """One of the run's BatchCompress streams: the items sent on its current call."""

    def __init__(self, index: int) -> None:
        self.index = index
        # Bumped when a call ends: the old call's sender then stops at its next item.
        self.generation = 0
        # id -> items in send order (a repeated id is answered once per send).
        self.pending: OrderedDict[str, deque[Item]] = OrderedDict()
        self.attempt = 1
        self.alive = True

    def add(self, item: Item) -> None:
        self.pending.setdefault(item.req.id, deque()).append(item)

    def take(self, ident: str) -> Item | None:
        queue = self.pending.get(ident)
        if not queue:
            return None
        item = queue.popleft()
        if not queue:
            del self.pending[ident]
        return item

    def drop_all(self) -> list[Item]:
        items = [item for queue in self.pending.values() for item in queue]
        self.pending.clear()
        return items


# What a sender does next (`StreamRun.next_step`).
STOP, RESEND, PULL, WAIT = "stop", "resend", "pull", "wait"


class StreamRun:
    """One `compress_stream` call over `streams` BatchCompress streams: the shared state
    (what is in flight, what must go out again, running totals), answers, reopen decisions.

    Every method takes `lock`: the sync client's senders run on grpc's threads, its
    readers on threads of their own."""

    def __init__(
        self,
        defaults: StreamDefaults,
        retry: RetryPolicy,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        max_in_flight: int,
        streams: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if streams < 1:
            raise ValueError("streams must be at least 1")
        self.defaults = defaults
        self.retry = retry
        self.deadline = Deadline(timeout)
        self.on_progress = on_progress
        self.max_in_flight = max_in_flight
        self.lanes = [Lane(i) for i in range(streams)]
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.resend: deque[Item] = deque()
        self.started = time.monotonic()
        # Items taken from the input, answered (once each), handed to the caller.
        self.sent = self.done = self.released = 0
        self.errors = self.original_bytes = self.compressed_bytes = 0
        self.resent = self.duplicates = 0
        self.exhausted = False  # the input has no more items
        self.pulling = False  # a sender is reading the input (outside the lock)
        self.closed = False  # the caller is gone or the run failed: senders stop
        self.stopped = threading.Event()  # the same, for waits outside the lock
        self.source_error: BaseException | None = None
        # The async client's senders wait on the event loop, not on `changed`.
        self.on_change: Callable[[], None] | None = None
        # In input order (`in_order`): answers waiting for an earlier one.
        self.held: dict[int, BatchResult] = {}
        self.next_release = 0
        # When the last break happened and which stream, until a re-sent item is answered.
        self.broke_at: tuple[float, int] | None = None

    def _notify(self) -> None:
        self.changed.notify_all()
        if self.on_change is not None:
            self.on_change()

    # -- senders -------------------------------------------------------------------

    def has_room(self) -> bool:
        return self.sent - self.released < self.max_in_flight

    def all_answered(self) -> bool:
        return self.exhausted and not self.resend and self.done == self.sent

    def next_step(self, lane: Lane, generation: int) -> str:
        """STOP (this call is over, or nothing is left), RESEND, PULL (read the input
        and call `add_new`), or WAIT (for room or for another sender's pull). Holds `lock`."""
        if self.closed or lane.generation != generation:
            return STOP
        if self.resend:
            return RESEND
        if self.exhausted:
            # Stay open while any item could still need sending again.
            return STOP if self.done == self.sent else WAIT
        if self.pulling or not self.has_room():
            return WAIT
        self.pulling = True
        return PULL

    def take_resend(self, lane: Lane) -> Item:
        item = self.resend.popleft()
        lane.add(item)
        return item

    def add_new(
        self, lane: Lane, generation: int, req: pb.BatchCompressRequest | None
    ) -> Item | None:
        """After a PULL: `req` is the input's next item (None: the input ended). Holds `lock`."""
        self.pulling = False
        self._notify()
        if req is None:
            self.exhausted = True
            return None
        item = Item(self.sent, req)
        self.sent += 1
        if self.closed or lane.generation != generation:
            self.resend.append(item)  # read for a call that just ended: the next one sends it
            return None
        lane.add(item)
        return item

    def input_failed(self, exc: BaseException) -> None:
        """The caller's iterator raised: answer what was sent, then re-raise it. Holds `lock`."""
        self.source_error = exc
        self.pulling = False
        self.exhausted = True
        self._notify()

    # -- readers -------------------------------------------------------------------

    def answer(self, lane: Lane, resp: pb.BatchCompressResponse) -> list[BatchResult]:
        """The answers this response makes ready for the caller (none, one, or in input
        order several); `consumed` once they are handed over."""
        with self.lock:
            item = lane.take(resp.id)
            if item is None or item.answered:
                # Answered before on a stream that then broke, or an id this stream never
                # sent: the caller gets each item once.
                self.duplicates += 1
                if item is None:
                    log.warning("stream %d: the server answered id %r, which it was not sent",
                                lane.index, resp.id)  # fmt: skip
                return []
            item.answered = True
            self.done += 1
            lane.attempt = 1  # progress: a later failure starts its backoff afresh
            if item.resent and self.broke_at is not None:
                at, broken = self.broke_at
                log.info(
                    "stream %d's items: the first sent again was answered %.2fs after it broke",
                    broken,
                    time.monotonic() - at,
                )
                self.broke_at = None
            if resp.WhichOneof("outcome") == "result":
                result = CompressResult.from_pb(resp.result)
                self.original_bytes += result.stats.original_bytes
                self.compressed_bytes += result.stats.compressed_bytes
                answer = BatchResult(resp.id, result=result)
            else:
                self.errors += 1
                answer = BatchResult(resp.id, error=from_status(resp.error))
            out = [answer]
            if self.defaults.in_order:
                self.held[item.seq] = answer
                out = []
                while self.next_release in self.held:
                    out.append(self.held.pop(self.next_release))
                    self.next_release += 1
            progress = self.progress()
        if self.on_progress is not None:
            self.on_progress(progress)
        return out

    def consumed(self, n: int) -> None:
        """The caller took `n` answers: room for as many new items (a slow caller so
        holds the input back, and memory stays flat)."""
        with self.lock:
            self.released += n
            self._notify()

    def broke(self, lane: Lane, error: LLMCompressError) -> float | None:
        """A call ended with `error`: its unanswered items go out again. Seconds to wait
        before reopening the stream, or None when it gives up (`error` is final for it)."""
        with self.lock:
            lane.generation += 1
            items = [item for item in lane.drop_all() if not item.answered]
            for item in items:
                item.resent = True
            self.resend.extend(sorted(items, key=lambda item: item.seq))
            self.resent += len(items)
            if items:
                self.broke_at = (time.monotonic(), lane.index)
            wait = self.retry.backoff(error, lane.attempt, self.deadline)
            lane.attempt += 1
            if wait is None:
                lane.alive = False
            others = sum(other.alive for other in self.lanes if other is not lane)
            self._notify()
        if wait is not None:
            where = "on the other streams" if others else "when it reopens"
            log.warning(
                "stream %d: %s; its %d unanswered items go out again %s, reopening in %.2fs",
                lane.index,
                error,
                len(items),
                where,
                wait,
            )
        elif others:
            log.warning(
                "stream %d gives up (%s); its %d unanswered items go out on the other streams",
                lane.index,
                error,
                len(items),
            )
        return wait

    def ended(self, lane: Lane) -> LLMCompressError | None:
        """A call ended without error. None when it answered all it was sent, else the
        error that makes it count as broken (its items then go out again)."""
        with self.lock:
            lane.generation += 1
            left = sum(len(queue) for queue in lane.pending.values())
            self._notify()
        if not left:
            return None
        return ServerError(
            grpc.StatusCode.INTERNAL,
            f"the server closed the stream with {left} items unanswered",
        )

    def last_lane(self) -> bool:
        with self.lock:
            return not any(lane.alive for lane in self.lanes)

    def close(self) -> None:
        """Stop every sender (the run is over or abandoned)."""
        with self.lock:
            self.closed = True
            self._notify()
        self.stopped.set()

    def finish(self) -> None:
        """After the last answer: the caller's iterator failing, or items left unanswered,
        is an error too."""
        if self.source_error is not None:
            raise self.source_error
        if not self.all_answered():
            raise ServerError(
                grpc.StatusCode.INTERNAL,
                f"the stream ended with {self.sent - self.done} items unanswered; run the "
                "batch again (llmc batch --resume) to finish them",
            )

    def progress(self) -> Progress:
        return Progress(
            sent=self.sent,
            done=self.done,
            errors=self.errors,
            original_bytes=self.original_bytes,
            compressed_bytes=self.compressed_bytes,
            elapsed_seconds=time.monotonic() - self.started,
            resent=self.resent,
            duplicates=self.duplicates,
        )
