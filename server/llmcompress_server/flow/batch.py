"""BatchCompress: a bounded window of items in flight per stream.

The next request is read only while the window has room, so HTTP/2 flow
control pushes back on a fast sender instead of this process buffering the
stream. Every id gets exactly one answer, a result or a per-item status; a
failing item never ends the stream. SEMANTIC items that are near-duplicates of
an earlier one in the window join its group and share its summary
(`codecs/semantic/grouping.py`); `Stats.group` and the item's span say which.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc
from google.rpc import status_pb2
from opentelemetry.trace import Span, Tracer

from llmcompress_proto.v1 import compression_pb2 as pb

from ..codecs.semantic.grouping import Membership, StreamGroups
from ..core.deadline import deadline_scope
from ..core.domain import CompressCommand, CompressOutcome, Mode, UndecodableRequest
from ..core.errors import InvalidInput, LLMCompressError
from ..core.events import Events, mark_failure

log = logging.getLogger(__name__)

# How long a cancelled stream waits for its items' cleanup (HTTP requests closed).
CANCEL_WAIT_SECONDS = 1.0


class CompressFn(Protocol):
    """The pipeline's `compress`: one item, with the near-duplicate group it joined."""

    def __call__(
        self, cmd: CompressCommand, *, group: Membership | None = None
    ) -> Awaitable[CompressOutcome]: ...


def status_for(exc: BaseException) -> status_pb2.Status:
    """The per-item google.rpc.Status for an exception (same mapping as the interceptor)."""
    if isinstance(exc, LLMCompressError):
        code, message = exc.code, str(exc)
    else:
        code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
    return status_pb2.Status(code=code.value[0], message=message)


# Items answered at once (`compress_now`) share one span per run of at most this many.
INLINE_SPAN_ITEMS = 256


class InlineSpan:
    """One span for a run of items answered at once: their count, first and last id,
    errors and the seconds they took; ended at INLINE_SPAN_ITEMS items, when an item
    takes the task path, or when the stream ends."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.span: Span | None = None
        self.items = self.errors = 0
        self.seconds = 0.0
        self.last_id = ""

    def add(self, item_id: str, seconds: float, failed: bool) -> None:
        if self.span is None:
            self.span = self.tracer.start_span(
                "batch.inline", attributes={"llmc.item.first_id": item_id}
            )
        self.items += 1
        self.errors += failed
        self.seconds += seconds
        self.last_id = item_id
        if self.items >= INLINE_SPAN_ITEMS:
            self.end()

    def end(self) -> None:
        if self.span is not None:
            self.span.set_attributes(
                {
                    "llmc.items": self.items,
                    "llmc.item.last_id": self.last_id,
                    "llmc.errors": self.errors,
                    "llmc.seconds": self.seconds,
                }
            )
            self.span.end()
        self.span = None
        self.items = self.errors = 0
        self.seconds = 0.0


class BatchRunner:
    """Runs one BatchCompress stream: at most `window` items in flight, one answer per id.

    With `group_threshold` above 0, SEMANTIC items (`default_mode` for items that name
    none) are grouped with near-duplicates earlier in the window. With `compress_now`,
    a cheap item (ZSTD, short) is answered as it is read, with no task and no span of its
    own (`InlineSpan` covers a run of them); anything else gets a task and a
    `batch.item` span."""

    def __init__(
        self,
        compress: CompressFn,
        window: int,
        tracer: Tracer | None = None,
        *,
        group_threshold: float = 0.0,
        default_mode: Mode = Mode.ZSTD,
        compress_now: Callable[[CompressCommand], CompressOutcome | None] | None = None,
    ) -> None:
        self.compress = compress
        self.window = window
        self.tracer = tracer if tracer is not None else Events().tracer
        self.group_threshold = group_threshold
        self.default_mode = default_mode
        self.compress_now = compress_now

    def _answer_now(
        self, item: pb.BatchCompressRequest | UndecodableRequest, inline: InlineSpan
    ) -> pb.BatchCompressResponse | None:
        """The answer to a cheap item, computed now; None for an item that needs a task."""
        if self.compress_now is None or isinstance(item, UndecodableRequest):
            return None
        start = time.perf_counter()
        try:
            outcome = self.compress_now(CompressCommand.from_pb(item.request))
        except Exception as exc:  # answered for this item alone, as on the task path
            if not isinstance(exc, LLMCompressError):
                log.exception("item %r failed unexpectedly", item.id)
            inline.add(item.id, time.perf_counter() - start, failed=True)
            return pb.BatchCompressResponse(id=item.id, error=status_for(exc))
        if outcome is None:
            return None
        inline.add(item.id, time.perf_counter() - start, failed=False)
        response = pb.BatchCompressResponse(id=item.id)
        outcome.fill(response.result)
        return response

    def _membership(
        self, groups: StreamGroups | None, item: pb.BatchCompressRequest | UndecodableRequest
    ) -> Membership | None:
        """The group a SEMANTIC item joins, in stream order; None for anything else."""
        if groups is None or isinstance(item, UndecodableRequest):
            return None
        req = item.request
        wanted = self.default_mode.to_pb() if req.mode == pb.MODE_UNSPECIFIED else req.mode
        if wanted != pb.MODE_SEMANTIC or not req.text.strip():
            return None
        # Only items asked the same way can share a summary.
        options = (req.target_ratio, req.quality, req.evaluate_quality)
        return groups.join(item.id, req.text, options)

    async def _answer(
        self,
        item: pb.BatchCompressRequest | UndecodableRequest,
        membership: Membership | None = None,
    ) -> pb.BatchCompressResponse:
        if isinstance(item, UndecodableRequest):
            # No id can be read from bytes that do not parse; answer with an empty id.
            error = InvalidInput(f"a stream item cannot be parsed: {item.error}")
            return pb.BatchCompressResponse(id="", error=status_for(error))
        # One span per item, so each item's stages sit together under the stream's span.
        with self.tracer.start_as_current_span(
            "batch.item",
            attributes={"llmc.item.id": item.id},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                cmd = CompressCommand.from_pb(item.request)
                outcome = await self.compress(cmd, group=membership)
                response = pb.BatchCompressResponse(id=item.id)
                outcome.fill(response.result)
                if membership is not None:
                    stats = response.result.stats
                    stats.group = membership.group.leader_id
                    # A fallback to another mode stores no summary at all.
                    stats.shared_summary = membership.shared and stats.mode == pb.MODE_SEMANTIC
                return response
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                mark_failure(span, exc)
                if not isinstance(exc, LLMCompressError):
                    log.exception("item %r failed unexpectedly", item.id)
                return pb.BatchCompressResponse(id=item.id, error=status_for(exc))
            finally:
                if membership is not None:
                    span.set_attributes(
                        {
                            "llmc.group": membership.group.leader_id,
                            "llmc.group.leader": membership.leader,
                            "llmc.group.similarity": membership.similarity,
                            "llmc.group.shared_summary": membership.shared,
                        }
                    )
                    if membership.leader:
                        # Members still waiting for a summary make their own.
                        membership.group.close()

    async def run(
        self,
        requests: AsyncIterable[pb.BatchCompressRequest],
        time_remaining: float | None = None,
    ) -> AsyncIterator[pb.BatchCompressResponse]:
        """Answer every item; `time_remaining` is the stream's gRPC deadline (None: none)."""
        room = asyncio.Semaphore(self.window)
        # Unbounded in type, bounded in practice: at most `window` items are
        # in flight or finished-but-unsent, because the reader waits on `room`.
        done: asyncio.Queue[tuple[int, pb.BatchCompressResponse] | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        in_order = False
        limit = None if time_remaining is None else time.monotonic() + time_remaining

        groups = (
            StreamGroups(self.group_threshold, self.window) if self.group_threshold > 0 else None
        )

        async def work(
            seq: int, item: pb.BatchCompressRequest, membership: Membership | None
        ) -> None:
            # Each item's backend calls stop at the stream's deadline.
            left = None if limit is None else limit - time.monotonic()
            with deadline_scope(left):
                done.put_nowait((seq, await self._answer(item, membership)))

        async def read() -> None:
            nonlocal in_order
            seq = 0
            dictionary = ""  # the stream's default, from its first message
            stream = aiter(requests)
            inline = InlineSpan(self.tracer)
            try:
                while True:
                    # Room first, then read: while the window is full nothing is read,
                    # so HTTP/2 flow control holds the sender back.
                    await room.acquire()
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        room.release()
                        break
                    if isinstance(item, pb.BatchCompressRequest):
                        if seq == 0:
                            in_order, dictionary = item.in_order, item.dictionary
                        if dictionary and not item.request.dictionary:
                            item.request.dictionary = dictionary
                    membership = self._membership(groups, item)
                    now = None if membership else self._answer_now(item, inline)
                    if now is not None:
                        done.put_nowait((seq, now))
                    else:
                        inline.end()
                        task = asyncio.create_task(work(seq, item, membership))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    seq += 1
            finally:
                inline.end()
            while tasks:
                await asyncio.gather(*list(tasks))
            done.put_nowait(None)

        reader = asyncio.create_task(read())
        reader.add_done_callback(
            lambda t: done.put_nowait(None) if not t.cancelled() and t.exception() else None
        )
        pending: dict[int, pb.BatchCompressResponse] = {}
        next_seq = 0
        try:
            while (entry := await done.get()) is not None:
                seq, response = entry
                if not in_order:
                    room.release()
                    yield response
                    continue
                pending[seq] = response
                while next_seq in pending:
                    room.release()
                    yield pending.pop(next_seq)
                    next_seq += 1
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            # A client cancel or deadline lands here: stop reading, cancel every
            # item (and so its backend HTTP request), and wait until they are gone.
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.wait([reader, *tasks], timeout=CANCEL_WAIT_SECONDS)
