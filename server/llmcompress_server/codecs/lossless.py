"""LOSSLESS mode: range coding (constriction) over the embedded model's next-token distribution.

Determinism by construction. Encoder and decoder run one evaluation schedule
(`SCHEDULE`): every chunk starts from an empty KV cache and the start token
(BOS) at position 0, then evaluates one token per `llama_decode` call with
`model.embedded.coding_threads` threads; the probabilities of token i are
`exp(logits - max)` in float32 (numpy), quantized by constriction's fast
`Categorical` (perfect=False, no normalisation needed). A batched prompt pass
gives different logits, so it is never used. What both sides must share is
recorded in the envelope (`EngineFingerprint`) and checked before decoding.

Chunk policy: texts of more than n_ctx tokens are cut into chunks of n_ctx
tokens, and every chunk resets the context (no overlap). Each chunk has its
own coded stream, so chunks are independent: they are encoded and decoded in
parallel when `model.embedded.workers > 1`, memory stays bounded by n_ctx, and
no KV shifting (which would change the logits) is needed. The price is a
context-free start per chunk: measured on a 4 KB passage (1128 tokens), five
chunks at n_ctx 256 took 700 coded bytes against 620 for one chunk, about 20 B
per reset, i.e. ~2% of a full 2048-token chunk. A sliding window with a K-token
overlap would win those bytes back for K extra evaluations per chunk, and
would make decoding sequential. At the default n_ctx of 2048 only texts above
~8 KB have more than one chunk.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import constriction
import llama_cpp
import numpy as np
import numpy.typing as npt

from llmcompress.v1 import compression_pb2 as pb

from ..backends.embedded import EmbeddedEngine, Worker
from ..envelope import model_name
from ..errors import BackendError, CannotEncode, DataLoss, LLMCompressError, PreconditionFailed
from ..stages import StageClock
from ..tokens import ExactTokenizer, Tokenized
from . import CompressOptions, Decoded, Encoded

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")

# Names the evaluation schedule and probability quantization described above
# ("t" = token by token, version 1); envelopes store the number. Change it
# whenever either changes: old envelopes are then refused, not misread.
SCHEDULE_ID = 1
SCHEDULE = f"t{SCHEDULE_ID}"

# Bit positions of the CPU features in `EngineFingerprint.cpu_features`. Only
# ever append: the bits are stored in envelopes. llama.cpp's build flags decide
# its kernels; numpy's runtime SIMD dispatch decides the float32 exp.
_LLAMA_FEATURES = (
    "SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2", "AVX512",
    "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "NEON", "ARM_FMA",
    "FP16_VA", "MATMUL_INT8", "SVE", "DOTPROD", "SME", "RISCV_V", "VSX",
    "WASM_SIMD", "LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI",
)  # fmt: skip
_NUMPY_FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_SPR", "ASIMD", "SVE")
_NUMPY_BIT0 = 32
_UNLISTED_BIT = 63  # a llama.cpp feature this list does not name yet


def cpu_feature_bits() -> int:
    """The CPU features the engine build and numpy use on this machine, as bits."""
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    bits = 0
    for part in info.replace("|", "\n").splitlines():
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if not sep or value.strip() in ("", "0") or not name:
            continue
        if name in _LLAMA_FEATURES:
            bits |= 1 << _LLAMA_FEATURES.index(name)
        else:
            bits |= 1 << _UNLISTED_BIT
    np_features: dict[str, bool] = {}
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:  # numpy has no public API for its runtime SIMD dispatch
            np_features = importlib.import_module(module).__cpu_features__
            break
        except (ImportError, AttributeError):
            continue
    for i, name in enumerate(_NUMPY_FEATURES):
        if np_features.get(name):
            bits |= 1 << (_NUMPY_BIT0 + i)
    return bits


def cpu_feature_names(bits: int) -> str:
    names = [n for i, n in enumerate(_LLAMA_FEATURES) if bits >> i & 1]
    names += [f"numpy:{n}" for i, n in enumerate(_NUMPY_FEATURES) if bits >> (_NUMPY_BIT0 + i) & 1]
    if bits >> _UNLISTED_BIT & 1:
        names.append("unlisted")
    return ",".join(names) or "none"


def engine_version() -> str:
    """The llama-cpp-python, constriction and numpy versions, in that order: each can
    change logits or quantization. Bare versions, because every envelope stores them."""
    cx = importlib.metadata.version("constriction")
    return f"{llama_cpp.__version__},{cx},{np.__version__}"


def pack_versions(engine: str) -> list[int] | None:
    """`engine` as EngineFingerprint.versions, or None when a part does not pack exactly
    (a pre-release or a number of 1000 or more is stored as the string instead)."""
    packed = []
    for version in engine.split(","):
        parts = version.split(".")
        if len(parts) != 3 or not all(p.isdecimal() and int(p) < 1000 for p in parts):
            return None
        major, minor, patch = map(int, parts)
        packed.append(major * 1_000_000 + minor * 1000 + patch)
    return packed if unpack_versions(packed) == engine else None


def unpack_versions(packed: Sequence[int]) -> str:
    return ",".join(f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}" for v in packed)


def compact_fingerprint(
    engine: str, threads: int, cpu_features: int, n_ctx: int
) -> pb.EngineFingerprint:
    """The fingerprint as format v2 stores it: ~24 bytes instead of ~37."""
    fp = pb.EngineFingerprint(
        threads=threads, schedule_id=SCHEDULE_ID, cpu_features=cpu_features, n_ctx=n_ctx
    )
    packed = pack_versions(engine)
    if packed is None:
        fp.engine = engine
    else:
        fp.versions.extend(packed)
    return fp


def fingerprint_fields(fp: pb.EngineFingerprint) -> dict[str, str | int]:
    """The compared fields of a v1 or v2 fingerprint, in one form."""
    return {
        "engine": unpack_versions(fp.versions) if fp.versions else fp.engine,
        "threads": fp.threads,
        "schedule": f"t{fp.schedule_id}" if fp.schedule_id else fp.schedule,
        "n_ctx": fp.n_ctx,
    }


_FINGERPRINT_LABELS = {
    "engine": "engine (llama-cpp-python,constriction,numpy)",
    "threads": "threads",
    "schedule": "schedule",
    "n_ctx": "n_ctx",
}


class _Cancelled(LLMCompressError):
    """The caller went away; the worker stops coding."""


def _run_schedule(
    worker: Worker,
    threads: int,
    restore_threads: int,
    n_tokens: int,
    step: Callable[[int, npt.NDArray[np.float32]], int],
) -> None:
    """One pass of the schedule over a chunk, on the worker's thread.

    `step(i, probs)` gets the unnormalised distribution of token i (a (1,
    n_vocab) float32 array, overwritten at the next step) and returns token i,
    which is evaluated next. The encoder knows the token; the decoder decodes
    it from `probs`. Sharing this loop is what keeps both sides identical.
    """
    llama = worker.llama
    ctx = llama.ctx
    n_vocab = llama.n_vocab()
    memory = llama_cpp.llama_get_memory(ctx)
    start = llama.token_bos()
    if start < 0:
        start = llama.token_eos()
    probs = np.empty((1, n_vocab), dtype=np.float32)
    row = probs[0]
    cancel = worker.cancel
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    llama_cpp.llama_memory_clear(memory, True)
    llama.reset()
    llama_cpp.llama_set_n_threads(ctx, threads, threads)
    try:
        batch.n_tokens = 1
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = 1
        token = start
        for i in range(n_tokens):
            if cancel.is_set():
                raise _Cancelled("the request was cancelled")
            batch.token[0] = token
            batch.pos[0] = i
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise BackendError(
                    f"llama.cpp could not evaluate token {i} (llama_decode returned {rc}); "
                    "the embedded engine is out of memory or misconfigured",
                    retryable=False,
                )
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)
            )
            np.subtract(logits, logits.max(), out=row)
            np.exp(row, out=row)
            token = step(i, probs)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_memory_clear(memory, True)
        llama.reset()
        llama_cpp.llama_set_n_threads(ctx, restore_threads, restore_threads)


class LosslessCodec:
    """MODE_LOSSLESS on the embedded engine; `CannotEncode` when verify finds a mismatch or
    the vocabulary cannot reproduce a byte (the pipeline then stores ZSTD)."""

    mode = pb.MODE_LOSSLESS

    # Bump when the coded output for the same text and settings changes (cache key).
    version = 1

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        cfg = engine.config
        self.n_ctx = cfg.n_ctx
        self.threads = cfg.coding_threads
        self._fingerprint = compact_fingerprint(
            engine_version(), self.threads, cpu_feature_bits(), self.n_ctx
        )
        # Built on first use from a worker's model (every worker loads the same file).
        self._tokenizer: ExactTokenizer | None = None
        self._tokenizer_lock = threading.Lock()

    def cache_params(self, opts: CompressOptions) -> dict[str, str | int | float | bool] | None:
        """Model and engine fingerprint shape the envelope; None until the model is loaded."""
        if not self.engine.started:
            return None
        return {
            "codec": "lossless",
            "version": self.version,
            "model_sha256": self.engine.identity.sha256,
            "fingerprint": self._fingerprint.SerializeToString(deterministic=True).hex(),
            "verify": opts.verify,
        }

    @property
    def fingerprint(self) -> pb.EngineFingerprint:
        out = pb.EngineFingerprint()
        out.CopyFrom(self._fingerprint)
        return out

    # -- the jobs that run on worker threads ---------------------------------

    def tokenize(self, data: bytes, worker: Worker) -> Tokenized:
        """Tokens that detokenize to exactly `data` (`Unrepresentable` when none can)."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = ExactTokenizer(worker.llama)
        return self._tokenizer.tokenize(worker.llama, data)

    @staticmethod
    def _detokenize(tokens: list[int], worker: Worker) -> bytes:
        out: bytes = worker.llama.detokenize(tokens, special=False)
        return out

    def _encode_chunk(self, tokens: Sequence[int], worker: Worker) -> bytes:
        encoder = constriction.stream.queue.RangeEncoder()
        family = constriction.stream.model.Categorical(perfect=False)
        symbol = np.empty(1, dtype=np.int32)

        def step(i: int, probs: npt.NDArray[np.float32]) -> int:
            symbol[0] = tokens[i]
            encoder.encode(symbol, family, probs)
            return tokens[i]

        _run_schedule(worker, self.threads, self.engine.threads, len(tokens), step)
        words: npt.NDArray[np.uint32] = encoder.get_compressed()
        return words.astype("<u4", copy=False).tobytes()

    def _decode_chunk(self, stream: bytes, n_tokens: int, worker: Worker) -> list[int]:
        words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
        try:
            decoder = constriction.stream.queue.RangeDecoder(words)
        except Exception as exc:  # constriction reports bad input as plain exceptions
            raise DataLoss(f"the LOSSLESS coded stream is unreadable ({exc})") from None
        family = constriction.stream.model.Categorical(perfect=False)
        out: list[int] = []

        def step(i: int, probs: npt.NDArray[np.float32]) -> int:
            try:
                token = int(decoder.decode(family, probs)[0])
            except Exception as exc:
                raise DataLoss(
                    f"the LOSSLESS coded stream is corrupt at token {i} ({exc})"
                ) from None
            out.append(token)
            return token

        _run_schedule(worker, self.threads, self.engine.threads, n_tokens, step)
        if not decoder.maybe_exhausted():
            raise DataLoss(
                "the LOSSLESS coded stream does not end where its tokens do: it is truncated "
                "or corrupted; restore the envelope from a good copy"
            )
        return out

    def _evaluate_chunk(self, tokens: Sequence[int], worker: Worker) -> None:
        _run_schedule(
            worker, self.threads, self.engine.threads, len(tokens), lambda i, p: tokens[i]
        )

    # -- chunking -------------------------------------------------------------

    def chunks(self, tokens: Sequence[int]) -> list[Sequence[int]]:
        return [tokens[i : i + self.n_ctx] for i in range(0, len(tokens), self.n_ctx)] or [[]]

    async def _map(self, job: Callable[[T, Worker], U], items: Sequence[T]) -> list[U]:
        """Run `job` per item on the engine's workers, at most one item per worker at a time
        (so a long text never fills the engine's queue on its own)."""
        gate = asyncio.Semaphore(self.engine.config.workers)

        async def one(item: T) -> U:
            async with gate:
                return await self.engine.run(functools.partial(job, item))

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def encode_tokens(self, tokens: Sequence[int]) -> pb.LosslessBody:
        streams = await self._map(self._encode_chunk, self.chunks(tokens))
        body = pb.LosslessBody(
            fingerprint=self._fingerprint, stream=b"".join(streams), n_tokens=len(tokens)
        )
        if len(streams) > 1:
            body.chunk_words.extend(len(s) // 4 for s in streams)
        return body

    async def evaluate(self, tokens: Sequence[int]) -> None:
        """The schedule with no coding at all: the engine's raw token-by-token speed
        (what the benchmark compares LOSSLESS against)."""
        await self._map(self._evaluate_chunk, self.chunks(tokens))

    async def decode_tokens(self, body: pb.LosslessBody, original_length: int) -> list[int]:
        """The token sequence in `body`; DataLoss when its layout cannot be right."""
        n = body.n_tokens
        # Every text token is at least one byte, which also bounds the work
        # garbage can cause.
        if n > original_length:
            raise DataLoss(
                f"the envelope claims {n} tokens for {original_length} bytes: it is corrupted"
            )
        if len(body.stream) % 4:
            raise DataLoss("the LOSSLESS coded stream is not whole 32-bit words: it is truncated")
        sizes = [len(c) for c in self.chunks(range(n))]
        words = list(body.chunk_words) or [len(body.stream) // 4]
        if len(words) != len(sizes) or sum(words) * 4 != len(body.stream):
            raise DataLoss(
                f"the LOSSLESS body's chunk table ({len(words)} chunks, {sum(words)} words) does "
                f"not fit its {n} tokens and {len(body.stream)} stream bytes: it is corrupted"
            )
        parts: list[tuple[bytes, int]] = []
        offset = 0
        for w, size in zip(words, sizes, strict=True):
            parts.append((body.stream[offset : offset + 4 * w], size))
            offset += 4 * w
        decoded = await self._map(lambda part, worker: self._decode_chunk(*part, worker), parts)
        return [t for chunk in decoded for t in chunk]

    # -- the Codec protocol ----------------------------------------------------

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        data = text.encode("utf-8")
        await self.engine.start()
        with clock.stage("lossless.tokenize", **{"llmc.bytes": len(data)}) as span:
            tokenized = await self.engine.run(functools.partial(self.tokenize, data))
            span.set_attribute("llmc.piecewise_bytes", tokenized.piecewise_bytes)
        tokens = tokenized.tokens
        with clock.stage("lossless.encode", **{"llmc.tokens": len(tokens)}):
            body = await self.encode_tokens(tokens)
        if opts.verify:
            with clock.stage("lossless.verify", **{"llmc.tokens": len(tokens)}):
                try:
                    back = await self.decode_tokens(body, len(data))
                except DataLoss as exc:
                    back, problem = [], str(exc)
                else:
                    problem = _first_difference(tokens, back)
            if problem:
                log.error("LOSSLESS verify failed, storing ZSTD instead: %s", problem)
                raise CannotEncode(f"LOSSLESS verify failed ({problem})")
        return Encoded(
            envelope=pb.Envelope(mode=pb.MODE_LOSSLESS, lossless=body),
            model=self.engine.identity,
            backend=self.engine.name,
            piecewise_bytes=tokenized.piecewise_bytes,
        )

    def check_compatible(self, env: pb.Envelope) -> None:
        """PreconditionFailed naming every difference that would make decoding here wrong."""
        self.check_model(env.model)
        self.check_fingerprint(env.lossless.fingerprint)

    def check_model(self, ref: pb.ModelRef) -> None:
        ident = self.engine.identity
        if not ident.matches(ref):
            name = model_name(ref) or "a model this server does not know by name"
            raise PreconditionFailed(
                f"model: envelope {name} (sha256 "
                f"{ref.sha256_prefix:016x}...), this server {ident.name} (sha256 "
                f"{ident.sha256[:16]}...); reconstruct it on a server with the model that "
                "compressed it"
            )

    def check_fingerprint(self, theirs: pb.EngineFingerprint) -> None:
        ours = self._fingerprint
        diffs: list[str] = []
        their_fields, our_fields = fingerprint_fields(theirs), fingerprint_fields(ours)
        for name, label in _FINGERPRINT_LABELS.items():
            a, b = their_fields[name], our_fields[name]
            if a != b:
                diffs.append(f"{label}: envelope {a}, this server {b}")
        if theirs.cpu_features != ours.cpu_features:
            diffs.append(
                f"cpu_features: envelope {cpu_feature_names(theirs.cpu_features)}, "
                f"this server {cpu_feature_names(ours.cpu_features)}"
            )
        if diffs:
            raise PreconditionFailed(
                "this server cannot decode the envelope exactly, its LOSSLESS engine differs: "
                + "; ".join(diffs)
                + ". Reconstruct it on a server with the same package versions, "
                "model.embedded.coding_threads, model.embedded.n_ctx and CPU type"
            )

    async def decode(self, env: pb.Envelope, clock: StageClock) -> Decoded:
        await self.engine.start()
        self.check_compatible(env)
        body = env.lossless
        with clock.stage("lossless.decode", **{"llmc.tokens": body.n_tokens}):
            tokens = await self.decode_tokens(body, env.original_length)
        with clock.stage("lossless.detokenize"):
            data = await self.engine.run(functools.partial(self._detokenize, tokens))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataLoss(
                "the LOSSLESS stream decodes to bytes that are not UTF-8: it is corrupted"
            ) from None
        return Decoded(text=text, exact=True, model=self.engine.identity.name)


def _first_difference(want: Sequence[int], got: Sequence[int]) -> str:
    if list(want) == list(got):
        return ""
    at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    if at is None:
        return f"decoded {len(got)} tokens, expected {len(want)}"
    return f"decoded token {at} is {got[at]}, expected {want[at]}"


__all__ = [
    "SCHEDULE",
    "LosslessCodec",
    "cpu_feature_bits",
    "engine_version",
    "fingerprint_fields",
    "pack_versions",
]
