"""The coding engine: fixed-width llama.cpp steps shared by every coding job, a slot per stream.

Exactness rests on one measured fact: at a fixed width W and thread count, a
stream's logits depend only on its own tokens, not on its slot, its
neighbours or the step it entered at. So every step decodes exactly W rows
(idle slots padded with the start token at position 0, their rows ignored)
and a stream codes the same whatever else runs. Streams of other widths or
thread counts (older envelopes) run on a context of their own, built on
demand: at most one beside the engine's own, freed when idle.

A primed stream (a corpus dictionary's primer, coding/primer.py) starts from
the primer's KV cells instead of the start token alone: the cells a stream of
the primer's tokens left in its slot at this context key (`snapshot`), copied
into the new stream's slot as they are, so encoder and decoder start from the
same bytes at the same positions.

Each lane (one thread, its own contexts) runs steps while it has work; jobs
wait in a bounded queue and enter slots as they free up, the job with the
fewest active slots first. A cancelled or failed job leaves its slots at the
next step; the others go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..core.errors import BackendError, LLMCompressError, Overloaded
from .layout import Schedule
from .rows import Coder, RowModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextKey:
    """What makes two contexts give the same logits for the same stream."""

    width: int
    threads: int
    n_ctx: int  # per stream


# llama_state_seq_get_data of one slot: a sequence's KV cells, positions and all.
SeqState = Any  # a ctypes array of c_uint8


@dataclass(frozen=True, eq=False)
class PrimerState:
    """A primer's KV cells at one context key, what a primed stream starts from: `length`
    cells (the start token at position 0, then every primer token but the last), and
    `next_token`, the primer's last token, the primed stream's first input (at position
    `length`). Never changed once made: every slot it enters gets a copy of `cells`."""

    key: ContextKey
    length: int
    next_token: int
    cells: SeqState

    @property
    def nbytes(self) -> int:
        return len(self.cells)


@dataclass
class StreamWork:
    """One stream to code: `coder` gets `n_tokens` rows, `row_model` stands between.
    `primer`: the KV cells the stream starts from (None: the start token alone).
    `snapshot`: called (in the lane thread) with the slot's KV state when the stream
    finishes, before anything else enters the slot: how a primer's cells are made."""

    coder: Coder
    row_model: RowModel
    n_tokens: int
    primer: PrimerState | None = None
    snapshot: Callable[[SeqState], None] | None = None


@dataclass
class JobTiming:
    """Seconds a job waited for its first slot and then spent coding."""

    wait_s: float = 0.0
    coding_s: float = 0.0
    steps: int = 0


class _Cancelled(LLMCompressError):
    """The awaiting caller is gone."""


@dataclass(eq=False)
class _Job:
    key: ContextKey
    schedule: Schedule
    streams: list[StreamWork]
    future: concurrent.futures.Future[JobTiming]
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    next_stream: int = 0
    active: int = 0
    done: int = 0
    steps: int = 0
    error: BaseException | None = None

    @property
    def dead(self) -> bool:
        return self.error is not None or self.future.cancelled()

    @property
    def pending(self) -> bool:
        return self.next_stream < len(self.streams)


@dataclass(eq=False)
class _Slot:
    job: _Job
    work: StreamWork
    coded: int = 0
    pos: int = 0
    token: int = 0  # the input of the next step
    restore: PrimerState | None = None  # cells to copy into the slot before its first step


@dataclass
class EngineStats:
    """Counters since start; a metrics reader takes differences."""

    steps: int = 0
    rows: int = 0  # active rows coded
    slot_steps: int = 0  # width x steps: rows / slot_steps is the occupancy
    busy_s: float = 0.0
    contexts_built: int = 0


class CodingContext:
    """One llama.cpp context of width W on the loaded model (its weights shared)."""

    def __init__(self, model: Any, key: ContextKey, *, slide: int) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = key.n_ctx * key.width
        params.n_seq_max = key.width
        # One token per sequence per step, all of them in one ubatch: a split
        # ubatch would change the kernels and so the logits.
        params.n_batch = params.n_ubatch = key.width
        params.n_threads = params.n_threads_batch = key.threads
        # Decided here, not left to llama.cpp's "auto": part of the schedule.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.kv_unified = False  # a KV stream per sequence
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise BackendError(
                f"llama.cpp could not create a coding context of width {key.width} and "
                f"{key.n_ctx} tokens per stream (out of memory?); lower "
                "model.embedded.coding_width or n_ctx",
                retryable=False,
            )
        self.key = key
        self.ctx = ctx
        self.slide = slide
        self.memory = llama_cpp.llama_get_memory(ctx)
        vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        bos = int(llama_cpp.llama_vocab_bos(vocab))
        self.start_token = bos if bos >= 0 else int(llama_cpp.llama_vocab_eos(vocab))
        width = key.width
        self.batch = llama_cpp.llama_batch_init(width, 0, 1)
        self.batch.n_tokens = width
        for i in range(width):
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = i
            self.batch.logits[i] = 1  # every row, always: the output shape is part of the schedule
        self.slots: list[_Slot | None] = [None] * width
        self._probs = np.empty((width, self.n_vocab), dtype=np.float32)
        self._max = np.empty((width, 1), dtype=np.float32)
        self._view = self._probs.view()
        self._view.flags.writeable = False

    @property
    def active(self) -> int:
        return sum(s is not None for s in self.slots)

    def free_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is None]

    def put(self, index: int, job: _Job, work: StreamWork) -> None:
        primer = work.primer
        if primer is None:
            self.slots[index] = _Slot(job, work, token=self.start_token)
        else:
            self.slots[index] = _Slot(
                job, work, pos=primer.length, token=primer.next_token, restore=primer
            )

    def drop_dead(self) -> list[_Job]:
        """Free the slots of cancelled or failed jobs; the jobs that lost a slot."""
        touched = []
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.job.dead:
                self.slots[i] = None
                slot.job.active -= 1
                touched.append(slot.job)
        return touched

    def step(self) -> tuple[list[_Job], int]:
        """One llama_decode of W rows, each active row coded: the jobs that finished a
        stream, and the number of rows coded."""
        batch, memory = self.batch, self.memory
        for i, slot in enumerate(self.slots):
            token, pos = (self.start_token, 0) if slot is None else (slot.token, slot.pos)
            if slot is not None and slot.restore is not None:
                # A new primed stream: the slot starts with the primer's cells.
                self._restore(i, slot.restore)
                slot.restore = None
            elif pos == 0:
                # A new stream, or padding: the slot starts empty.
                llama_cpp.llama_memory_seq_rm(memory, i, -1, -1)
            batch.token[i] = token
            batch.pos[i] = pos
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            llama_cpp.llama_memory_clear(memory, True)
            raise BackendError(
                f"llama.cpp could not evaluate a coding step (llama_decode returned {rc}); "
                "the embedded engine is out of memory or misconfigured",
                retryable=False,
            )
        logits: npt.NDArray[np.float32] = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits(self.ctx), shape=(self.key.width, self.n_vocab)
        )
        # exp(logits - max) per row, for the whole block: elementwise ops and a
        # row max, so each row is bit-identical to computing it alone.
        probs = self._probs
        np.max(logits, axis=1, keepdims=True, out=self._max)
        np.subtract(logits, self._max, out=probs)
        np.exp(probs, out=probs)
        finished: list[_Job] = []
        rows = 0
        for i, slot in enumerate(self.slots):
            if slot is None:
                continue
            rows += 1
            job = slot.job
            try:
                weights = slot.work.row_model.distribution(self._view[i])
                token = slot.work.coder.code(weights)
                slot.work.row_model.update(token)
                if slot.coded + 1 == slot.work.n_tokens and slot.work.snapshot is not None:
                    slot.work.snapshot(self._state(i))
            except Exception as exc:  # this job fails; its neighbours go on
                if job.error is None:
                    job.error = exc
                continue
            slot.coded += 1
            if slot.coded == slot.work.n_tokens:
                # The job's counters change under the engine's lock (`_step`):
                # another lane may be admitting this job's next stream.
                self.slots[i] = None
                finished.append(job)
                continue
            slot.token = token
            slot.pos += 1
            if slot.pos == self.key.n_ctx:
                self._slide(i, slot)
        return finished, rows

    def _state(self, index: int) -> SeqState:
        """The KV state of slot `index`'s sequence (llama_state_seq_get_data)."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, index)
        cells = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self.ctx, cells, size, index) != size:
            raise BackendError("llama.cpp could not copy a primer's KV cells out of its slot")
        return cells

    def _restore(self, index: int, primer: PrimerState) -> None:
        """Slot `index` emptied, then given the primer's cells. An empty slot's cells start
        at its first cell, so the primer's land at cells 0..length-1 on both sides.
        A failure fails every job of this step (as a failed llama_decode does): it means
        state made by another context, a bug."""
        if primer.key != self.key:
            raise AssertionError("a primer's cells restored into a context of another key")
        llama_cpp.llama_memory_seq_rm(self.memory, index, -1, -1)
        cells = primer.cells
        if not llama_cpp.llama_state_seq_set_data(self.ctx, cells, len(cells), index):
            llama_cpp.llama_memory_seq_rm(self.memory, index, -1, -1)
            raise BackendError(
                "llama.cpp could not copy a primer's KV cells into a coding slot",
                retryable=False,
            )

    def _slide(self, index: int, slot: _Slot) -> None:
        """The stream filled its context: drop the `slide` oldest tokens after the start
        token and shift the rest down (SLIDE). RESET layouts never get here."""
        if not self.slide:
            raise AssertionError("a RESET stream outgrew its context: the layout is wrong")
        memory, k = self.memory, self.slide
        llama_cpp.llama_memory_seq_rm(memory, index, 1, 1 + k)
        llama_cpp.llama_memory_seq_add(memory, index, 1 + k, -1, -k)
        slot.pos -= k

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def slide_tokens(n_ctx: int) -> int:
    """Tokens dropped per slide: a quarter of the context, so a slide (a K-shift of the
    whole cache) happens every n_ctx / 4 tokens and the window keeps 3/4 of it."""
    return max(1, n_ctx // 4)


class _Lane:
    """One engine thread and the contexts it steps."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.contexts: dict[ContextKey, CodingContext] = {}
        self.thread: threading.Thread | None = None


class CodingEngine:
    """Fixed-width coding over a loaded model, shared by every coding job.

    `model` is the `llama_model` pointer of the loaded model. `key` is the
    engine's own context (width, threads, n_ctx per stream); `also` are more
    contexts every lane keeps (a width-1 one for lone jobs); jobs of other keys
    get one extra context at a time. `queue_size` bounds the jobs waiting for
    their first slot.
    """

    def __init__(
        self,
        model: Any,
        key: ContextKey,
        *,
        lanes: int = 1,
        queue_size: int = 64,
        max_extra_contexts: int = 1,
        also: Sequence[ContextKey] = (),
    ) -> None:
        self.model = model
        self.key = key
        self.kept = {key, *also}
        self.queue_size = queue_size
        self.max_extra = max_extra_contexts
        self.stats = EngineStats()
        self._lanes = [_Lane(i) for i in range(lanes)]
        self._jobs: list[_Job] = []  # admitted, not finished; in arrival order
        self._cond = threading.Condition()
        self._closed = False
        self._started = False
        self._building: set[ContextKey] = set()
        self._broken: BaseException | None = None

    # -- the asyncio side --------------------------------------------------

    def start(self) -> None:
        """Build the engine's own contexts and start the lanes (idempotent)."""
        with self._cond:
            if self._started:
                return
            self._started = True
        for lane in self._lanes:
            for key in sorted(self.kept, key=lambda k: k != self.key):
                lane.contexts[key] = self._build(key)
            lane.thread = threading.Thread(
                target=self._run_lane, args=(lane,), name=f"coding-{lane.index}", daemon=True
            )
            lane.thread.start()

    @property
    def queue_depth(self) -> int:
        """Jobs with streams still waiting for a slot."""
        with self._cond:
            return sum(1 for j in self._jobs if j.pending)

    @property
    def idle(self) -> bool:
        """No job queued or running."""
        with self._cond:
            return not self._jobs

    @property
    def lane_free(self) -> bool:
        """Fewer jobs than lanes: a new lone job gets a lane's width-1 context to itself."""
        with self._cond:
            return len(self._jobs) < len(self._lanes)

    @property
    def live_contexts(self) -> int:
        with self._cond:
            return sum(len(lane.contexts) for lane in self._lanes)

    @property
    def occupancy(self) -> float:
        """Active slots over the width of every live context, now."""
        with self._cond:
            contexts = [c for lane in self._lanes for c in lane.contexts.values()]
            total = sum(c.key.width for c in contexts)
            return sum(c.active for c in contexts) / total if total else 0.0

    def submit(
        self, streams: Sequence[StreamWork], key: ContextKey, schedule: Schedule
    ) -> concurrent.futures.Future[JobTiming]:
        """Queue a job; its future completes when every stream is coded. Overloaded when
        the queue is full. Cancelling the future frees its slots at the next step."""
        future: concurrent.futures.Future[JobTiming] = concurrent.futures.Future()
        with self._cond:
            if self._closed or self._broken is not None:
                raise BackendError(
                    "the coding engine is shut down or failed (see the server log)",
                    retryable=self._broken is None,
                )
            waiting = sum(1 for j in self._jobs if j.pending)
            if waiting >= self.queue_size:
                raise Overloaded(
                    f"the coding engine has {waiting} jobs waiting (model.embedded.queue_size="
                    f"{self.queue_size}); retry later",
                    retry_after=1.0,
                )
            if any(w.primer is not None and w.primer.key != key for w in streams):
                raise ValueError("a primer's cells made at another context key")
            if schedule is not Schedule.SLIDE and any(
                w.n_tokens + (w.primer.length if w.primer else 0) > key.n_ctx for w in streams
            ):
                raise ValueError("a stream (and its primer) longer than its context under RESET")
            job = _Job(key, schedule, [w for w in streams if w.n_tokens > 0], future)
            if not job.streams:
                future.set_result(JobTiming())
                return future
            self._jobs.append(job)
            self._cond.notify_all()
        return future

    async def run(
        self, streams: Sequence[StreamWork], key: ContextKey, schedule: Schedule
    ) -> JobTiming:
        """Code `streams` and wait; the results are in their coders."""
        future = self.submit(streams, key, schedule)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            with self._cond:
                self._cond.notify_all()
            raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._jobs:
                job.error = BackendError("the coding engine shut down", retryable=True)
                self._settle(job)
            self._jobs.clear()
            self._cond.notify_all()
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join()
            for ctx in lane.contexts.values():
                ctx.close()
            lane.contexts.clear()

    # -- the lane threads --------------------------------------------------

    def _build(self, key: ContextKey) -> CodingContext:
        self.stats.contexts_built += 1
        return CodingContext(self.model, key, slide=slide_tokens(key.n_ctx))

    def _run_lane(self, lane: _Lane) -> None:
        try:
            self._lane_loop(lane)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("coding lane %d stopped", lane.index)
            with self._cond:
                self._broken = exc
                for job in self._jobs:
                    job.error = BackendError(f"the coding engine failed ({exc!r})")
                    self._settle(job)
                self._jobs.clear()

    def _lane_loop(self, lane: _Lane) -> None:
        while True:
            with self._cond:
                build = self._admit(lane)
                while build is None and not any(c.active for c in lane.contexts.values()):
                    if self._closed:
                        return
                    self._cond.wait()
                    build = self._admit(lane)
                if self._closed:
                    return
            if build is not None:
                self._build_extra(lane, build)
                continue
            for ctx in list(lane.contexts.values()):
                if ctx.active:
                    self._step(ctx)

    def _extra_keys(self) -> set[ContextKey]:
        """Extra contexts that exist or are being built, over all lanes."""
        live = {k for lane in self._lanes for k in lane.contexts if k not in self.kept}
        return live | self._building

    def _admit(self, lane: _Lane) -> ContextKey | None:
        """Under the lock: drop dead jobs, free idle extra contexts, fill free slots.
        Returns a key to build a context for (outside the lock), if a job needs one."""
        for job in [j for j in self._jobs if j.dead]:
            self._jobs.remove(job)
            if job.active == 0:
                self._settle(job)
        for ctx in lane.contexts.values():
            for job in ctx.drop_dead():
                if job.active == 0:
                    self._settle(job)
        for key, ctx in list(lane.contexts.items()):
            wanted = any(j.key == key and j.pending for j in self._jobs)
            if key not in self.kept and not ctx.active and not wanted:
                ctx.close()
                del lane.contexts[key]
        build: ContextKey | None = None
        for key, ctx in lane.contexts.items():
            free = ctx.free_slots()
            share = self._share(key)
            while free and ctx.active < share:
                waiting = [j for j in self._jobs if j.key == key and j.pending]
                if not waiting:
                    break
                job = min(waiting, key=lambda j: j.active)  # fewest slots first; oldest on ties
                if job.started is None:
                    job.started = time.perf_counter()
                ctx.put(free.pop(0), job, job.streams[job.next_stream])
                job.next_stream += 1
                job.active += 1
        for job in self._jobs:
            if job.pending and job.key not in lane.contexts and build is None:
                others = self._extra_keys()
                if job.key in others:
                    continue  # another lane runs that context
                if len(others) < self.max_extra:
                    build = job.key
                    self._building.add(build)
        return build

    def _share(self, key: ContextKey) -> int:
        """Under the lock: the streams of `key` one lane's context should hold, so the
        lanes that run `key` split its live and waiting streams evenly. The first lane to
        wake after a submit would otherwise take every stream while the others idle, and
        lanes run on their own cores."""
        lanes = [lane.contexts[key] for lane in self._lanes if key in lane.contexts]
        live = sum(ctx.active for ctx in lanes)
        waiting = sum(len(j.streams) - j.next_stream for j in self._jobs if j.key == key)
        return -(-(live + waiting) // max(1, len(lanes)))

    def _build_extra(self, lane: _Lane, key: ContextKey) -> None:
        try:
            ctx = self._build(key)
        except Exception as exc:
            with self._cond:
                self._building.discard(key)
                for job in self._jobs:
                    if job.key == key and job.error is None:
                        job.error = exc
            return
        with self._cond:
            self._building.discard(key)
            lane.contexts[key] = ctx

    def _step(self, ctx: CodingContext) -> None:
        t0 = time.perf_counter()
        try:
            finished, rows = ctx.step()
        except Exception as exc:  # every job in this context fails; the next admit frees them
            with self._cond:
                for slot in ctx.slots:
                    if slot is not None and slot.job.error is None:
                        slot.job.error = exc
            return
        with self._cond:
            for job in finished:
                job.active -= 1
                job.done += 1
            stats = self.stats
            stats.steps += 1
            stats.slot_steps += ctx.key.width
            stats.rows += rows
            stats.busy_s += time.perf_counter() - t0
            jobs = {s.job for s in ctx.slots if s is not None} | set(finished)
            for job in jobs:
                job.steps += 1
            for job in set(finished):  # a job can finish two streams in one step
                # A job cancelled or failed while this step ran outside the lock may
                # already be out of `_jobs` (another lane's admit took it out while it
                # still held slots); its last slot is freed here, so it settles here.
                if job.done == len(job.streams) or (job.dead and job.active == 0):
                    if job in self._jobs:
                        self._jobs.remove(job)
                    self._settle(job)

    def _settle(self, job: _Job) -> None:
        """Complete a job's future (under the lock): its result, error or cancellation."""
        future = job.future
        if future.done():
            return
        now = time.perf_counter()
        started = job.started if job.started is not None else now
        timing = JobTiming(started - job.submitted, now - started, job.steps)
        try:
            if job.error is not None:
                future.set_exception(job.error)
            elif job.done == len(job.streams):
                future.set_result(timing)
            else:
                future.set_exception(_Cancelled("the job was cancelled"))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the caller in the meantime


__all__ = [
    "CodingContext",
    "CodingEngine",
    "ContextKey",
    "EngineStats",
    "JobTiming",
    "PrimerState",
    "SeqState",
    "StreamWork",
    "slide_tokens",
]
