"""LOSSLESS mode: range coding (constriction) over the embedded model's next-token distribution.

Determinism by construction. Every text is coded on the coding engine
(coding/engine.py): fixed-width steps of one token per stream, where a row's
logits depend only on its own stream at a fixed width and thread count. The
probabilities are `exp(logits - max)` in float32, passed through the stream's
row model (the identity today) and quantized by constriction's fast
`Categorical` (perfect=False). What both sides must share is recorded in the
envelope (`EngineFingerprint`, coding/fingerprint.py) and checked before
decoding; the width and thread count are run for the envelope, whatever this
server's own.

Stream layout (coding/layout.py): a text splits into streams, one per slot,
so one long text fills the width; short texts (under 2 x 512 tokens) stay one
stream, since every stream starts without context (about 20 coded bytes per
start, measured on a 4 KB passage). A width-1 RESET server lays streams out
as before the engine (schedule t1: chunks of n_ctx tokens; format v3 headers
are refused by servers older than v3, by version); so does a wide one for a
text of few streams (under
2/3 of the width) that finds fewer jobs than lanes (`coding_narrow_when_idle`):
it gets a lane's width-1 context, where padding the other rows would only add
latency (`_placement`).

Primed by a corpus dictionary (`CompressOptions.dictionary`, and `dictionary` on
decode): every stream starts from the KV cells of the dictionary's primer text
(its last n_ctx / 2 tokens), made once per context key by the same engine steps
on both sides (coding/primer.py), and its streams get the rest of the context.
Without a primer, the envelope is byte-identical to one made before primers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from opentelemetry.util.types import AttributeValue

from llmcompress_proto.v1 import compression_pb2 as pb

from ..backends.embedded import EmbeddedEngine
from ..coding import fingerprint
from ..coding import text as coded_text
from ..coding.engine import ContextKey, JobTiming, PrimerState, StreamWork
from ..coding.layout import Layout, Schedule
from ..coding.primer import PrimerStates
from ..coding.rows import (
    ROW_MODELS,
    Coder,
    RowModelFactory,
    StopCoding,
    StreamCodeLength,
    row_model_spec,
)
from ..coding.tokens import ExactTokenizer, Tokenized, unescape
from ..core.config import CodingSchedule
from ..core.dictionary import Dictionary
from ..core.envelope import model_name, model_prefix
from ..core.errors import CannotEncode, DataLoss, PreconditionFailed
from ..core.events import CodingJobEnded, ModelCallEnded
from ..telemetry.stages import StageClock
from . import CompressOptions, Decoded, Encoded
from . import primer as primer_choice

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bounds on what an envelope may make this server build: a context of that
# many rows, each step on that many threads.
MAX_WIDTH = 64
MAX_THREADS = 64

# A chosen primer's size in tokens, by default (see `choose_primer`). Every step of a
# primed stream attends over the primer's cells too: a width-1 step measured 14 ms with
# an empty context, 15 ms after 256 cells, 17 ms after 512, 18 ms after 1,024. On 40
# test changelog items (bench/primer.py, width 1, verify on) a 128-token budget (103
# tokens) made bodies 9.1% smaller at 95% of the speed; 256 tokens 10.1% at 89%.
PRIMER_TOKENS = 128
# Primers tokenized, by dictionary id (a few recent ones: tokenizing is cheap).
_PRIMER_TOKENS_KEPT = 16

# Fields that must be equal on both sides; width and threads are run for the
# envelope instead, and schedule and row model need only be known here.
_FINGERPRINT_LABELS = {
    "engine": "engine (llama-cpp-python,constriction,numpy)",
    "n_ctx": "n_ctx",
    "gpu_layers": "gpu_layers",
}


class LosslessCodec:
    """MODE_LOSSLESS on the embedded engine's coding engine; `CannotEncode` when verify finds
    a mismatch or the vocabulary cannot reproduce a byte (the pipeline then stores ZSTD)."""

    mode = pb.MODE_LOSSLESS

    # Bump when the coded output for the same text and settings changes (cache key).
    version = 2

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        cfg = engine.config
        self.n_ctx = cfg.n_ctx
        self.width = cfg.coding_width
        self.threads = cfg.coding_threads
        # Width 1 with RESET is the stream layout of before the engine (t1).
        self.slide = cfg.coding_schedule is CodingSchedule.SLIDE
        self.schedule = self._schedule(self.width)
        self.narrow_when_idle = cfg.coding_narrow_when_idle and self.width > 1
        self.row_model = cfg.coding_row_model
        # What this server runs, in full (v2 form: compared field by field with an
        # envelope's), and what it writes (v3: the build as a digest).
        self._full = self._fingerprint_for(self.width)
        self._build = fingerprint.build_of(self._full)
        self._fingerprint = fingerprint.written(self._full)
        self._narrow_fingerprint = fingerprint.written(self._fingerprint_for(1))
        # Built on first use from the engine's tokenizer model (~0.3 s over the vocabulary).
        self._tokenizer: ExactTokenizer | None = None
        self._tokenizer_lock = threading.Lock()
        self._row_models: dict[int, RowModelFactory] = {}
        self._primer_tokens: OrderedDict[bytes, list[int]] = OrderedDict()
        self._primer_states: PrimerStates | None = None

    def _schedule(self, width: int) -> Schedule:
        if self.slide:
            return Schedule.SLIDE
        return Schedule.T1 if width == 1 else Schedule.RESET

    def _fingerprint_for(self, width: int) -> pb.EngineFingerprint:
        return fingerprint.compact_fingerprint(
            fingerprint.engine_version(),
            self.threads,
            fingerprint.cpu_feature_bits(),
            self.n_ctx,
            schedule=self._schedule(width),
            width=width,
            row_model=self.row_model,
            gpu_layers=self.engine.config.n_gpu_layers,
        )

    def cache_params(self, opts: CompressOptions) -> dict[str, str | int | float | bool] | None:
        """Model and engine fingerprint shape the envelope; None until the model is loaded."""
        if not self.engine.started:
            return None
        params: dict[str, str | int | float | bool] = {
            "codec": "lossless",
            "version": self.version,
            "model_sha256": self.engine.identity.sha256,
            "fingerprint": self._fingerprint.SerializeToString(deterministic=True).hex(),
            "verify": opts.verify,
        }
        if opts.dictionary is not None and opts.dictionary.primer:
            params["primer"] = opts.dictionary.hex
        return params

    @property
    def fingerprint(self) -> pb.EngineFingerprint:
        out = pb.EngineFingerprint()
        out.CopyFrom(self._fingerprint)
        return out

    @property
    def key(self) -> ContextKey:
        return ContextKey(self.width, self.threads, self.n_ctx)

    # -- tokens: the one place text becomes tokens and back -------------------------------

    def _exact_tokenizer(self) -> ExactTokenizer:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = ExactTokenizer(self.engine.tokenizer)
            return self._tokenizer

    async def tokenize(self, data: bytes, *, escapes: bool = False) -> Tokenized:
        """Tokens that detokenize to exactly `data`; a byte no token spells raises
        `Unrepresentable`, or with `escapes` is escaped (`tokens.escape`)."""
        await self.engine.start()
        llama = self.engine.tokenizer

        def run() -> Tokenized:
            return self._exact_tokenizer().tokenize(llama, data, escapes=escapes)

        return await asyncio.to_thread(run)

    async def row_models(self, model_id: int) -> RowModelFactory:
        """The per-stream factory of row model `model_id` for this model's vocabulary
        (built once); PreconditionFailed naming an id this server does not have."""
        spec = row_model_spec(model_id)
        factory = self._row_models.get(model_id)
        if factory is None:
            pieces = (await asyncio.to_thread(self._exact_tokenizer)).pieces
            factory = self._row_models.setdefault(model_id, spec(pieces))
        return factory

    # -- primers: a corpus dictionary's text before every stream ---------------------------

    def max_primer_tokens(self) -> int:
        """A primer's bound: half the context, so a stream keeps the other half."""
        return self.n_ctx // 2

    async def primer_tokens(self, dictionary: Dictionary | None) -> list[int]:
        """The tokens a dictionary's primer puts before every stream: its last
        `max_primer_tokens` (those nearest the text); none without a primer."""
        if dictionary is None or not dictionary.primer:
            return []
        tokens = self._primer_tokens.get(dictionary.id)
        if tokens is None:
            # Escaped like a text, so any primer tokenizes; the same tokens on both sides.
            tokens = (await self.tokenize(dictionary.primer.encode("utf-8"), escapes=True)).tokens
            self._primer_tokens[dictionary.id] = tokens
            while len(self._primer_tokens) > _PRIMER_TOKENS_KEPT:
                self._primer_tokens.popitem(last=False)
        else:
            self._primer_tokens.move_to_end(dictionary.id)
        return tokens[-self.max_primer_tokens() :]

    async def choose_primer(self, samples: Sequence[str], budget: int | None = None) -> str:
        """A primer for a dictionary trained on `samples`, of at most `budget` tokens
        (default PRIMER_TOKENS; never over `max_primer_tokens`): see codecs/primer.py."""
        await self.engine.start()

        async def count(text: str) -> int:
            return len((await self.tokenize(text.encode("utf-8"), escapes=True)).tokens)

        limit = min(budget or PRIMER_TOKENS, self.max_primer_tokens())
        return await primer_choice.choose_primer(samples, limit, count)

    @property
    def primer_states(self) -> PrimerStates:
        """The primers' KV cells, per context key (the engine must be started)."""
        if self._primer_states is None:
            self._primer_states = PrimerStates(self.engine.coding)
        return self._primer_states

    async def _primer_state(self, key: ContextKey, primer: Sequence[int]) -> PrimerState | None:
        if not primer:
            return None
        return await self.primer_states.get(key, primer)

    async def detokenize(self, tokens: list[int]) -> bytes:
        llama = self.engine.tokenizer
        out: bytes = await asyncio.to_thread(llama.detokenize, tokens, special=False)
        return out

    # -- coding on the engine ---------------------------------------------------------

    async def _job(
        self,
        kind: str,
        tokens: int,
        streams: int,
        key: ContextKey,
        work: Callable[[], Awaitable[tuple[T, JobTiming]]],
    ) -> T:
        """One engine job in a span of its own, reported to the event sinks."""
        events = self.engine.events
        attributes: dict[str, AttributeValue] = {
            "llmc.coding.kind": kind,
            "llmc.coding.width": key.width,
            "llmc.coding.threads": key.threads,
            "llmc.coding.streams": streams,
            "llmc.tokens": tokens,
        }
        with events.tracer.start_as_current_span("coding.job", attributes=attributes) as span:
            result, timing = await work()
            span.set_attribute("llmc.coding.wait_seconds", timing.wait_s)
            span.set_attribute("llmc.coding.seconds", timing.coding_s)
        events.coding_job(CodingJobEnded(kind, timing.wait_s, timing.coding_s, tokens, key.width))
        self._report_coding(tokens, timing.coding_s)
        return result

    def _report_coding(self, n_tokens: int, seconds: float) -> None:
        """A finished coding pass is model work: `n_tokens` evaluations of the embedded model,
        reported as its input tokens under operation "coding" (token and cost accounting)."""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "coding",
            "gen_ai.request.model": self.engine.config.model_name,
            "gen_ai.provider.name": "llama.cpp",
            "server.address": "in-process",
        }
        self.engine.events.model_called(
            ModelCallEnded(attributes, seconds, n_tokens, 0, self.engine.name)
        )

    def _placement(
        self, count: int, primed: int = 0
    ) -> tuple[ContextKey, pb.EngineFingerprint, Layout]:
        """Where `count` streams of one text are coded: on an idle engine, a text whose
        streams would fill under 2/3 of the width goes to width 1 (re-laid out for it by
        the caller), everything else to this server's width.

        A wide step of k live rows codes a text at k/W of the engine's full-width
        rate: 72 tok/s at width 16 against 48 at width 1 (core/config.py), so width 1
        is faster for k < 16 x 48/72 ~ 10.7. Before, only k = 1 went narrow, and a
        lone 5 KB Compress (2 streams) ran ~5x slower than at width 1.
        """
        if self.narrow_when_idle and 3 * count < 2 * self.width and self.engine.coding.lane_free:
            return (
                self.engine.narrow_key,
                self._narrow_fingerprint,
                primed_layout(self._schedule(1), self.n_ctx, primed),
            )
        return self.key, self._fingerprint, primed_layout(self.schedule, self.n_ctx, primed)

    async def code_stream(
        self, coder: Coder, n_tokens: int, primer: Sequence[int] = ()
    ) -> pb.EngineFingerprint:
        """One stream of at most n_ctx tokens (less the primer's) through the caller's
        `coder` (SEMANTIC's prefix coder), placed as `encode_tokens` places a lone stream:
        the fingerprint the stream decodes with. A coder that has all it needs raises
        `StopCoding`."""
        await self.engine.start()
        key, fingerprint, layout = self._placement(1, len(primer))
        factory = await self.row_models(self.row_model)
        state = await self._primer_state(key, primer)

        async def work() -> tuple[None, JobTiming]:
            work = StreamWork(coder, factory(), n_tokens, primer=state)
            return None, await self.engine.coding.run([work], key, layout.schedule)

        with contextlib.suppress(StopCoding):
            await self._job("encode", n_tokens, 1, key, work)
        return fingerprint

    async def encode_tokens(
        self, tokens: Sequence[int], primer: Sequence[int] = ()
    ) -> pb.LosslessBody:
        """`tokens` coded with this server's width, threads and schedule (width 1 for a
        lone text of one stream, see the module docstring), every stream after `primer`."""
        await self.engine.start()
        layout = primed_layout(self.schedule, self.n_ctx, len(primer))
        # Enough streams to fill every lane's slots (lanes run the same contexts).
        count = layout.stream_count(len(tokens), self.width * self.engine.config.coding_engines)
        key, fingerprint, layout = self._placement(count, len(primer))
        if key.width != self.width:
            count = layout.stream_count(len(tokens), key.width)
        factory = await self.row_models(self.row_model)
        state = await self._primer_state(key, primer)

        async def work() -> tuple[list[bytes], JobTiming]:
            return await coded_text.encode_tokens(
                self.engine.coding, key, layout, tokens, factory, count, state
            )

        streams = await self._job("encode", len(tokens), count, key, work)
        body = pb.LosslessBody(
            fingerprint=fingerprint, stream=b"".join(streams), n_tokens=len(tokens)
        )
        if len(streams) > 1:
            body.chunk_words.extend(len(s) // 4 for s in streams)
        return body

    async def evaluate(
        self, tokens: Sequence[int], width: int | None = None, primer: Sequence[int] = ()
    ) -> JobTiming:
        """The schedule with no coding at all: the engine's raw speed at `width` (default:
        this server's), which the benchmark compares LOSSLESS against."""
        await self.engine.start()
        width = width or self.width
        schedule = (
            self.schedule
            if width == self.width
            else (Schedule.T1 if width == 1 else Schedule.RESET)
        )
        layout = primed_layout(schedule, self.n_ctx, len(primer))
        key = ContextKey(width, self.threads, self.n_ctx)
        count = layout.stream_count(len(tokens), width)
        factory = await self.row_models(self.row_model)
        state = await self._primer_state(key, primer)
        timing = await coded_text.evaluate_tokens(
            self.engine.coding, key, layout, tokens, factory, count, state
        )
        self._report_coding(len(tokens), timing.coding_s)
        return timing

    async def code_lengths(
        self, texts: Sequence[Sequence[int]], primer: Sequence[int] = ()
    ) -> list[float]:
        """Each text's ideal code length in bits, one stream each after `primer` at this
        server's width (only its first tokens that fit beside the primer): what choosing
        a primer measures. No coding: a float64 sum, not an envelope's size."""
        await self.engine.start()
        room = self.n_ctx - len(primer)
        coders = [StreamCodeLength(t[:room]) for t in texts]
        factory = await self.row_models(self.row_model)
        state = await self._primer_state(self.key, primer)
        works = [StreamWork(c, factory(), len(c.tokens), state) for c in coders]
        timing = await self.engine.coding.run(works, self.key, Schedule.RESET)
        self._report_coding(sum(len(c.tokens) for c in coders), timing.coding_s)
        return [c.bits for c in coders]

    async def decode_tokens(
        self, body: pb.LosslessBody, original_length: int, primer: Sequence[int] = ()
    ) -> list[int]:
        """The token sequence in `body`, run at the width and threads it was coded with,
        every stream after `primer` (as it was coded); PreconditionFailed when this server
        cannot run it, DataLoss when its layout cannot be right."""
        await self.engine.start()
        fp = self.expanded(body.fingerprint)
        schedule = self._runnable(fp)
        n = body.n_tokens
        # Every text token is at least one byte, which also bounds the work
        # garbage can cause.
        if n > original_length:
            raise DataLoss(
                f"the envelope claims {n} tokens for {original_length} bytes: it is corrupted"
            )
        if len(body.stream) % 4:
            raise DataLoss("the LOSSLESS coded stream is not whole 32-bit words: it is truncated")
        if primer and 2 * len(primer) > fp.n_ctx:
            raise PreconditionFailed(
                f"the dictionary's primer ({len(primer)} tokens) does not fit the envelope's "
                f"context ({fp.n_ctx} tokens)"
            )
        layout = primed_layout(schedule, fp.n_ctx, len(primer))
        words = list(body.chunk_words) or [len(body.stream) // 4]
        if not layout.valid_count(n, len(words)) or sum(words) * 4 != len(body.stream):
            raise DataLoss(
                f"the LOSSLESS body's stream table ({len(words)} streams, {sum(words)} words) "
                f"does not fit its {n} tokens and {len(body.stream)} stream bytes: it is corrupted"
            )
        streams, at = [], 0
        for w in words:
            streams.append(body.stream[at : at + 4 * w])
            at += 4 * w
        key = ContextKey(fp.width or 1, fp.threads, fp.n_ctx)
        factory = await self.row_models(fp.row_model)
        state = await self._primer_state(key, primer)

        async def work() -> tuple[list[int], JobTiming]:
            return await coded_text.decode_tokens(
                self.engine.coding, key, layout, n, streams, factory, state
            )

        return await self._job("decode", n, len(streams), key, work)

    def _runnable(self, fp: pb.EngineFingerprint) -> Schedule:
        """The envelope's schedule, once its width, threads and row model are ones this
        server runs; PreconditionFailed naming the field otherwise."""
        schedule = fingerprint.schedule_of(fp)
        fields = fingerprint.fingerprint_fields(fp)
        problems = []
        if schedule is None:
            problems.append(
                f"schedule: envelope {fields['schedule']}, this server knows "
                + ", ".join(f"t{s.value}" for s in Schedule)
            )
        if fp.row_model not in ROW_MODELS:
            problems.append(
                f"row model: envelope {fp.row_model}, this server knows {sorted(ROW_MODELS)}"
            )
        if not 1 <= (fp.width or 1) <= MAX_WIDTH:
            problems.append(f"width: envelope {fp.width}, this server runs 1 to {MAX_WIDTH}")
        if not 1 <= fp.threads <= MAX_THREADS:
            problems.append(f"threads: envelope {fp.threads}, this server runs 1 to {MAX_THREADS}")
        if problems or schedule is None:
            raise PreconditionFailed(
                "this server cannot decode the envelope: "
                + "; ".join(problems)
                + ". Reconstruct it on a server of the version that wrote it"
            )
        return schedule

    # -- the Codec protocol ----------------------------------------------------

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        data = text.encode("utf-8")
        await self.engine.start()
        with clock.stage("lossless.tokenize", **{"llmc.bytes": len(data)}) as span:
            tokenized = await self.tokenize(data, escapes=True)
            span.set_attribute("llmc.piecewise_bytes", tokenized.piecewise_bytes)
        tokens = tokenized.tokens
        primer = await self.primer_tokens(opts.dictionary)
        with clock.stage("lossless.encode", **{"llmc.tokens": len(tokens)}):
            body = await self.encode_tokens(tokens, primer)
        body.escapes = tokenized.escapes
        if opts.verify:
            with clock.stage("lossless.verify", **{"llmc.tokens": len(tokens)}):
                try:
                    back = await self.decode_tokens(body, len(data), primer)
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
            # The envelope names the dictionary only when its primer shaped the body.
            dictionary=opts.dictionary if primer else None,
        )

    def check_compatible(self, env: pb.Envelope) -> None:
        """PreconditionFailed naming every difference that would make decoding here wrong."""
        self.check_model(env.model)
        self.check_fingerprint(env.lossless.fingerprint)

    def check_model(self, ref: pb.ModelRef) -> None:
        ident = self.engine.identity
        if not ident.matches(ref):
            prefix = model_prefix(ref)
            if prefix or not ref.known:
                name = model_name(ref) or "a model this server does not know by name"
                theirs = f"{name} (sha256 {prefix:016x}...)"
            else:  # a registry number from a newer server
                theirs = f"packaged model number {ref.known}, which this server does not know"
            raise PreconditionFailed(
                f"model: envelope {theirs}, this server {ident.name} (sha256 "
                f"{ident.sha256[:16]}...); reconstruct it on a server with the model that "
                "compressed it"
            )

    def expanded(self, theirs: pb.EngineFingerprint) -> pb.EngineFingerprint:
        """A v3 fingerprint with its build's fields taken from this server's (fields stored
        beside the build win); PreconditionFailed when the build is not this server's. Other
        forms as they are."""
        if not theirs.build:
            return theirs
        ours = self._full
        if theirs.build != self._build:
            fields = fingerprint.fingerprint_fields(ours)
            features = fingerprint.cpu_feature_names(ours.cpu_features)
            raise PreconditionFailed(
                "this server cannot decode the envelope exactly, its LOSSLESS engine build "
                f"differs: envelope build {theirs.build:08x}, this server {self._build:08x} "
                f"({_FINGERPRINT_LABELS['engine']} {fields['engine']}; cpu_features "
                f"{features}; n_ctx {ours.n_ctx}; gpu_layers "
                f"{ours.gpu_layers}). Reconstruct it on a server with the same package "
                "versions, model.embedded.n_ctx, model.embedded.n_gpu_layers and CPU type"
            )
        out = pb.EngineFingerprint()
        out.CopyFrom(theirs)
        out.build = 0
        if not (out.engine or out.versions):
            out.engine, out.versions[:] = ours.engine, ours.versions
        out.cpu_features = out.cpu_features or ours.cpu_features
        out.n_ctx = out.n_ctx or ours.n_ctx
        out.gpu_layers = out.gpu_layers or ours.gpu_layers
        return out

    def check_fingerprint(self, theirs: pb.EngineFingerprint) -> None:
        ours = self._full
        theirs = self.expanded(theirs)
        diffs: list[str] = []
        their_fields, our_fields = (
            fingerprint.fingerprint_fields(theirs),
            fingerprint.fingerprint_fields(ours),
        )
        for name, label in _FINGERPRINT_LABELS.items():
            a, b = their_fields[name], our_fields[name]
            if a != b:
                diffs.append(f"{label}: envelope {a}, this server {b}")
        if theirs.cpu_features != ours.cpu_features:
            diffs.append(
                f"cpu_features: envelope {fingerprint.cpu_feature_names(theirs.cpu_features)}, "
                f"this server {fingerprint.cpu_feature_names(ours.cpu_features)}"
            )
        if diffs:
            raise PreconditionFailed(
                "this server cannot decode the envelope exactly, its LOSSLESS engine differs: "
                + "; ".join(diffs)
                + ". Reconstruct it on a server with the same package versions, "
                "model.embedded.n_ctx, model.embedded.n_gpu_layers and CPU type"
            )
        self._runnable(theirs)

    async def decode(
        self, env: pb.Envelope, clock: StageClock, dictionary: Dictionary | None = None
    ) -> Decoded:
        """`env`'s text; `dictionary`: the one it was coded with (the pipeline resolves
        `Envelope.dictionary`). Decoding with another primer than the encoder's gives
        DataLoss or a text whose hash the pipeline then refuses."""
        await self.engine.start()
        self.check_compatible(env)
        body = env.lossless
        primer = await self.primer_tokens(dictionary)
        with clock.stage("lossless.decode", **{"llmc.tokens": body.n_tokens}):
            tokens = await self.decode_tokens(body, env.original_length, primer)
        with clock.stage("lossless.detokenize"):
            data = unescape(await self.detokenize(tokens), body.escapes)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataLoss(
                "the LOSSLESS stream decodes to bytes that are not UTF-8: it is corrupted"
            ) from None
        return Decoded(text=text, exact=True, model=self.engine.identity.name)


def primed_layout(schedule: Schedule, n_ctx: int, primed: int) -> Layout:
    """The streams' layout after a primer of `primed` tokens: under RESET and t1 a stream
    gets the context the primer leaves; SLIDE slides the primer out like older tokens."""
    return Layout(schedule, n_ctx if schedule is Schedule.SLIDE else n_ctx - primed)


def _first_difference(want: Sequence[int], got: Sequence[int]) -> str:
    if list(want) == list(got):
        return ""
    at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    if at is None:
        return f"decoded {len(got)} tokens, expected {len(want)}"
    return f"decoded token {at} is {got[at]}, expected {want[at]}"
