"""The compression pipeline: validate -> codec (or fallbacks) -> pack; unpack -> codec -> verify.

Codecs are chosen by mode; what is stored is always a sealed envelope, so
nothing a later Reconstruct needs lives only in this process. The pipeline is
the one place that decides a fallback: a codec that cannot encode says so
(`CannotEncode`), and `encode` walks the chain SEMANTIC -> LOSSLESS -> ZSTD as
`compression.semantic_fallback` and `llm.allow_degraded` allow, noting every
step in the result's reason and on the request's span. A text too short for
its SEMANTIC target (`TooShort`) is not a failure: it is stored exactly
(LOSSLESS, else ZSTD), not marked degraded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack

from opentelemetry import trace

from ..codecs import (
    INLINE_BYTES,
    BelowQuality,
    Codec,
    CompressOptions,
    Encoded,
    InlineCodec,
    TooShort,
)
from ..codecs.semantic.grouping import Membership
from ..core.config import Config, SemanticFallback
from ..core.dictionary import Dictionary
from ..core.domain import CompressCommand, CompressOutcome, Mode, ReconstructOutcome
from ..core.envelope import (
    check_original,
    mode_name,
    model_name,
    open_envelope,
    seal,
    seal_zstd,
)
from ..core.errors import (
    BackendError,
    CannotEncode,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)
from ..core.events import Events
from ..telemetry.stages import StageClock
from .admission import Admission
from .cache import CachedResult, Recipe, ResultCache, key_for, key_with, recipe_for
from .dictionaries import DictionaryStore

log = logging.getLogger(__name__)


class Pipeline:
    """Compress and Reconstruct for one server: admission, cache, codecs and their fallbacks.

    Reports its stages (and the cache its events) to `events`."""

    def __init__(
        self,
        config: Config,
        codecs: Mapping[Mode, Codec],
        admission: Admission | None = None,
        cache: ResultCache | None = None,
        events: Events | None = None,
        short_store: Mode | None = None,
        dictionaries: DictionaryStore | None = None,
    ) -> None:
        """`short_store`: where a text too short for SEMANTIC's target is stored exactly,
        as resolved from `compression.short_text_store` (LOSSLESS, or ZSTD when given).
        `dictionaries`: the corpus dictionaries requests and envelopes may name (None: a
        request naming one gets NOT_FOUND, an envelope naming one FAILED_PRECONDITION)."""
        self.config = config
        self.codecs = dict(codecs)
        self.short_store = short_store or Mode.LOSSLESS
        self.events = events if events is not None else Events()
        self.admission = admission or Admission(config.performance.max_queue)
        if cache is None and config.cache.enabled:
            cache = ResultCache.from_config(config, self.events)
        self.cache = cache
        self.dictionaries = dictionaries
        # Checked once: a runtime Protocol check costs more than a short item's zstd work.
        zstd = self.codecs.get(Mode.ZSTD)
        self._inline = zstd if isinstance(zstd, InlineCodec) else None
        self._inline_recipes: dict[bytes, Recipe | None] = {}

    def _codec(self, mode: Mode) -> Codec:
        codec = self.codecs.get(mode)
        if codec is None:
            available = ", ".join(sorted(m.value for m in self.codecs))
            raise PreconditionFailed(
                f"{mode.value} mode is not available on this server (available: {available})"
            )
        return codec

    def options(
        self,
        cmd: CompressCommand,
        group: Membership | None = None,
        dictionary: Dictionary | None = None,
    ) -> CompressOptions:
        comp = self.config.compression
        return CompressOptions(
            verify=comp.verify if cmd.verify is None else cmd.verify,
            target_ratio=cmd.target_ratio or comp.target_ratio,
            quality=cmd.quality,
            evaluate_quality=cmd.evaluate_quality,
            group=group,
            dictionary=dictionary,
        )

    async def _dictionary(self, ref: str) -> Dictionary | None:
        if not ref:
            return None
        if self.dictionaries is None:
            raise NotFound(f"no dictionary named {ref!r}: this server keeps no corpus dictionaries")
        return await self.dictionaries.resolve(ref)

    async def compress(
        self, cmd: CompressCommand, *, wait: bool = False, group: Membership | None = None
    ) -> CompressOutcome:
        """Compress one text; `wait` queues for admission (streams) instead of refusing;
        `group` is the BatchCompress near-duplicate group the item joined, if any."""
        gate = self.admission.wait() if wait else self.admission.admit()
        clock = StageClock(self.events)
        async with AsyncExitStack() as admitted:
            # A stage of its own, so time spent queued shows up in the breakdown.
            with clock.stage("admission.wait"):
                await admitted.enter_async_context(gate)
            outcome = await self._compress(cmd, clock, group)
        # On the RPC's (or batch item's) span: what was asked and what came out.
        trace.get_current_span().set_attributes(
            {
                "llmc.mode.requested": outcome.requested_mode.value,
                "llmc.mode": outcome.mode.value,
                "llmc.bytes": outcome.original_bytes,
                "llmc.envelope_bytes": len(outcome.envelope),
                "llmc.degraded": outcome.degraded,
                "llmc.dictionary": outcome.dictionary,
            }
        )
        return outcome

    async def _compress(
        self, cmd: CompressCommand, clock: StageClock, group: Membership | None
    ) -> CompressOutcome:
        with clock.stage("validate") as span:
            data = cmd.text.encode("utf-8")
            span.set_attribute("llmc.bytes", len(data))
            self._check_size(data)
        requested = cmd.mode or self.config.compression.default_mode
        mode, reason = self._route(cmd.text, requested)
        dictionary = await self._dictionary(cmd.dictionary)
        codec, opts = self._codec(mode), self.options(cmd, group, dictionary)

        async def compute() -> CachedResult:
            encoded = await self.encode(mode, cmd.text, opts, clock)
            with clock.stage("pack"):
                return self._sealed(data, encoded)

        cache = self._cache_for(cmd, mode, len(data))
        key = None if cache is None else key_for(codec, data, mode, opts)
        if cache is None or key is None:
            result, hit = await compute(), False
        else:
            result, source = await cache.resolve(key, data, compute, clock)
            hit = source != "computed"
        return self._outcome(data, requested, reason, result, hit, clock.timings, clock.total)

    def _cache_for(self, cmd: CompressCommand, mode: Mode, size: int) -> ResultCache | None:
        """The cache an item of `size` bytes coded in `mode` uses, or None: the one place
        that decides. A short ZSTD text is coded, not cached (`cache.zstd_min_bytes`)."""
        if cmd.skip_cache or (mode is Mode.ZSTD and size < self.config.cache.zstd_min_bytes):
            return None
        return self.cache

    def compress_now(self, cmd: CompressCommand) -> CompressOutcome | None:
        """A cheap item answered without awaiting anything, or None when it is not cheap:
        ZSTD (asked, or the default mode), at most INLINE_BYTES, with no Redis tier to ask
        (a text short enough to skip the cache asks none).

        Its stages are timed and reported like `compress`'s, but open no span each and go
        to the sinks in one call: on a ~100-byte record the spans and reports cost several
        times the zstd work (the BatchCompress runner opens one span per run of such
        items). It takes no admission slot, since it holds nothing across an await; the
        stream's window still bounds the stream."""
        requested = cmd.mode or self.config.compression.default_mode
        codec = self._inline
        if (
            requested is not Mode.ZSTD
            or codec is None
            or len(cmd.text) > INLINE_BYTES  # characters: at most the bytes
        ):
            return None
        dictionary = None
        if cmd.dictionary:
            # Only one this replica holds and may use without asking Redis.
            dictionary = self.dictionaries.cached(cmd.dictionary) if self.dictionaries else None
            if dictionary is None:
                return None
        begin = time.perf_counter()
        data = cmd.text.encode("utf-8")
        cache = self._cache_for(cmd, Mode.ZSTD, len(data))
        if len(data) > INLINE_BYTES or (cache is not None and cache.redis is not None):
            return None
        now = time.perf_counter()
        stages = [("validate", now - begin)]
        try:
            self._check_size(data)
        except InvalidInput:
            self.events.stages_finished(stages)
            raise
        _, reason = self._route(cmd.text, requested)  # ZSTD stays ZSTD
        key = None if cache is None else self._inline_key(codec, data, dictionary)
        start = now
        if cache is not None and key is not None:
            found = cache.lookup_memory(key, data)
            now = time.perf_counter()
            stages.append(("cache.lookup", now - start))
            if found is not None:
                self.events.stages_finished(stages)
                total = time.perf_counter() - begin
                return self._outcome(data, requested, reason, found, True, stages, total)
        # Sealing the envelope is part of `zstd.encode` here, where the task path has a
        # `pack` stage: it takes a fraction of a µs, and each stage costs a Stats entry
        # (22 bytes of a ~250-byte answer).
        frame, used = codec.frame_now(data, dictionary)
        short = used.short_id if used is not None else 0
        result = CachedResult(
            envelope=seal_zstd(frame, short),
            mode=Mode.ZSTD,
            dictionary=f"{short:08x}" if short else "",
        )
        start, now = now, time.perf_counter()
        stages.append(("zstd.encode", now - start))
        if cache is not None and key is not None:
            cache.store_memory(key, result)
            stages.append(("cache.store", time.perf_counter() - now))
        self.events.stages_finished(stages)
        total = time.perf_counter() - begin
        return self._outcome(data, requested, reason, result, False, stages, total)

    def _inline_key(
        self, codec: InlineCodec, data: bytes, dictionary: Dictionary | None
    ) -> bytes | None:
        """`key_for`, with the recipe kept per dictionary (`InlineCodec`: the frame depends
        on nothing else): 1.5 µs less a streamed item than building it every time."""
        ref = dictionary.id if dictionary is not None else b""
        if ref in self._inline_recipes:
            recipe = self._inline_recipes[ref]
        else:
            if len(self._inline_recipes) >= 64:
                self._inline_recipes.clear()
            recipe = recipe_for(codec, Mode.ZSTD, CompressOptions(dictionary=dictionary))
            self._inline_recipes[ref] = recipe
        return None if recipe is None else key_with(recipe, data)

    def _check_size(self, data: bytes) -> None:
        limit = self.config.compression.max_text_bytes
        if len(data) > limit:
            raise InvalidInput(
                f"text is {len(data)} bytes, above this server's limit of {limit} bytes "
                "(compression.max_text_bytes); split it into smaller items"
            )

    @staticmethod
    def _sealed(data: bytes, encoded: Encoded) -> CachedResult:
        short = encoded.dictionary.short_id if encoded.dictionary is not None else 0
        return CachedResult(
            envelope=seal(data, encoded.envelope, encoded.model, short),
            mode=Mode.from_pb(encoded.envelope.mode),
            model=encoded.model.name if encoded.model else "",
            backend=encoded.backend,
            degraded=encoded.degraded,
            reason=encoded.reason,
            quality=encoded.quality,
            piecewise_bytes=encoded.piecewise_bytes,
            dictionary=f"{short:08x}" if short else "",
        )

    @staticmethod
    def _outcome(
        data: bytes,
        requested: Mode,
        reason: str,
        result: CachedResult,
        hit: bool,
        stages: list[tuple[str, float]],
        total: float,
    ) -> CompressOutcome:
        return CompressOutcome(
            envelope=result.envelope,
            original_bytes=len(data),
            requested_mode=requested,
            mode=result.mode,
            model=result.model,
            backend=result.backend,
            stages=stages,
            cache_hit=hit,
            degraded=result.degraded,
            # Why the text went to another mode before any codec ran holds for a hit too.
            reason=result.reason or reason,
            quality=result.quality,
            total_seconds=total,
            piecewise_bytes=result.piecewise_bytes,
            dictionary=result.dictionary,
        )

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        if self.dictionaries is not None:
            await self.dictionaries.close()

    def _route(self, text: str, requested: Mode) -> tuple[Mode, str]:
        """The mode a text goes to before any codec runs, and why when it is not `requested`."""
        if not text.strip():
            # Nothing for a model to work on; a tiny exact envelope loses nothing.
            return Mode.ZSTD, "empty or whitespace-only text is stored as ZSTD"
        shortest = self.config.compression.min_compress_length
        if requested is Mode.SEMANTIC and len(text) < shortest:
            self._codec(requested)  # a server without SEMANTIC still says so
            return Mode.ZSTD, (
                f"text is {len(text)} characters, below compression.min_compress_length="
                f"{shortest}: stored as ZSTD (a summary would not be smaller)"
            )
        return requested, ""

    def chain(self, mode: Mode) -> list[Mode]:
        """`mode`, then where a text goes when a codec cannot encode it."""
        if mode is Mode.LOSSLESS:
            return [Mode.LOSSLESS, Mode.ZSTD]
        if mode is Mode.SEMANTIC:
            choice = self.config.compression.semantic_fallback
            if choice is SemanticFallback.NONE:
                return [Mode.SEMANTIC]
            if choice is SemanticFallback.LOSSLESS and Mode.LOSSLESS in self.codecs:
                return [Mode.SEMANTIC, Mode.LOSSLESS, Mode.ZSTD]
            return [Mode.SEMANTIC, Mode.ZSTD]
        return [mode]

    async def encode(
        self, mode: Mode, text: str, opts: CompressOptions, clock: StageClock
    ) -> Encoded:
        """`mode`'s codec's answer, or the next one of `chain(mode)` that can encode; ZSTD
        marked degraded when no model backend could answer (`llm.allow_degraded`)."""
        span = trace.get_current_span()
        failed: list[CannotEncode] = []
        for step in self.chain(mode):
            try:
                encoded = await self._codec(step).encode(text, opts, clock)
            except TooShort as exc:
                return await self._store_exactly(text, opts, clock, exc)
            except CannotEncode as exc:
                span.add_event(
                    "llmc.fallback", {"llmc.mode": step.value, "llmc.reason": exc.reason}
                )
                failed.append(exc)
                continue
            except BackendError as exc:
                if step is Mode.ZSTD or not self.config.llm.allow_degraded:
                    raise
                # Per item, so debug; the pool logs each endpoint's cooldown once.
                log.debug("%s mode fell back to ZSTD: %s", step.value, exc)
                span.add_event("llmc.fallback", {"llmc.mode": step.value, "llmc.reason": str(exc)})
                encoded = await self._codec(Mode.ZSTD).encode(text, opts, clock)
                encoded.degraded = True
                encoded.reason = f"stored as ZSTD: no model backend answered ({exc})"
                return encoded
            if failed:
                return self._fallen_back(encoded, mode, step, failed)
            if encoded.fallbacks:
                # Another model than the one asked for answered: usable, but not what was asked.
                encoded.degraded = True
                encoded.reason = "; ".join(dict.fromkeys(encoded.fallbacks))
            return encoded
        return self._chain_ended(mode, failed)

    async def _store_exactly(
        self, text: str, opts: CompressOptions, clock: StageClock, short: TooShort
    ) -> Encoded:
        """A text too short for its target ratio, stored exactly: a chosen mode, not a
        fallback, so not degraded (unless LOSSLESS then fails and ZSTD stores it)."""
        exact = [m for m in self.chain(self.short_store) if m in self.codecs]
        encoded = await self.encode(exact[0], text, opts, clock)
        stored = Mode.from_pb(encoded.envelope.mode)
        note = f"{short.reason}: stored exactly as {stored.name}"
        encoded.reason = f"{note}; {encoded.reason}" if encoded.reason else note
        return encoded

    @staticmethod
    def _fallen_back(
        encoded: Encoded, mode: Mode, stored: Mode, failed: list[CannotEncode]
    ) -> Encoded:
        encoded.degraded = True
        how = " (compression.semantic_fallback)" if mode is Mode.SEMANTIC else ", exact"
        steps = "; ".join(exc.reason for exc in failed)
        encoded.reason = f"{steps}; stored as {stored.name}{how}"
        below = next((exc for exc in failed if isinstance(exc, BelowQuality)), None)
        if below is not None:
            # The scores of the rejected attempt: they say why.
            encoded.quality = below.best.quality
        return encoded

    @staticmethod
    def _chain_ended(mode: Mode, failed: list[CannotEncode]) -> Encoded:
        """No codec of the chain could encode: only a SEMANTIC with no fallback gets here."""
        last = failed[-1]
        if isinstance(last, BelowQuality):
            kept = last.best
            kept.degraded = True
            kept.reason = f"{last.reason}; kept as SEMANTIC (compression.semantic_fallback=none)"
            return kept
        raise CannotEncode(
            f"{last.reason}; nothing was stored, because compression.semantic_fallback is none: "
            f"ask for another mode than {mode.name}, or set compression.semantic_fallback to "
            "zstd or lossless"
        )

    async def reconstruct(self, envelope: bytes) -> ReconstructOutcome:
        async with self.admission.admit():
            return await self._reconstruct(envelope)

    async def _reconstruct(self, envelope: bytes) -> ReconstructOutcome:
        clock = StageClock(self.events)
        with clock.stage("unpack"):
            env = open_envelope(envelope)
            limit = self.config.compression.max_text_bytes
            if env.original_length > limit:
                raise PreconditionFailed(
                    f"the envelope holds {env.original_length} bytes, above this server's limit "
                    f"of {limit} (compression.max_text_bytes); use a server with a higher limit"
                )
        mode = Mode.from_pb(env.mode)
        if mode not in self.codecs:
            raise PreconditionFailed(
                f"the envelope needs {mode_name(env.mode)}, which this server does not offer"
            )
        dictionary = None
        if env.dictionary:
            with clock.stage("dictionary"):
                dictionary = await self._envelope_dictionary(env.dictionary)
        decoded = await self.codecs[mode].decode(env, clock, dictionary)
        if decoded.exact:
            with clock.stage("checksum"):
                check_original(env, decoded.text.encode("utf-8"))
        return ReconstructOutcome(
            text=decoded.text,
            exact=decoded.exact,
            mode=mode,
            model=decoded.model or (model_name(env.model) if env.HasField("model") else ""),
            stages=clock.timings,
            quality=decoded.quality,
        )

    async def _envelope_dictionary(self, short_id: int) -> Dictionary:
        if self.dictionaries is None:
            raise PreconditionFailed(
                f"the envelope was coded with corpus dictionary {short_id:08x}, and this "
                "server keeps no corpus dictionaries; reconstruct it on a server that holds it"
            )
        return await self.dictionaries.for_envelope(short_id)


__all__ = ["Pipeline"]
