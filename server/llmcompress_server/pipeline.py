"""The compression pipeline: validate -> codec -> pack, and unpack -> codec -> verify.

Codecs are chosen by mode; what is stored is always a sealed envelope, so
nothing a later Reconstruct needs lives only in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack

from opentelemetry import trace

from .admission import Admission
from .backends.router import collect_fallbacks
from .cache import CachedResult, ResultCache, key_for
from .codecs import Codec, CompressOptions, Encoded
from .config import Config
from .domain import CompressCommand, CompressOutcome, Mode, ReconstructOutcome
from .envelope import check_original, mode_name, model_name, open_envelope, seal
from .errors import BackendError, InvalidInput, PreconditionFailed
from .events import Events
from .stages import StageClock

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self,
        config: Config,
        codecs: Mapping[Mode, Codec],
        admission: Admission | None = None,
        cache: ResultCache | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.codecs = dict(codecs)
        self.events = events if events is not None else Events()
        self.admission = admission or Admission(config.performance.max_queue)
        if cache is None and config.cache.enabled:
            cache = ResultCache.from_config(config, self.events)
        self.cache = cache

    def _codec(self, mode: Mode) -> Codec:
        codec = self.codecs.get(mode)
        if codec is None:
            available = ", ".join(sorted(m.value for m in self.codecs))
            raise PreconditionFailed(
                f"{mode.value} mode is not available on this server (available: {available})"
            )
        return codec

    def options(self, cmd: CompressCommand) -> CompressOptions:
        comp = self.config.compression
        return CompressOptions(
            verify=comp.verify if cmd.verify is None else cmd.verify,
            target_ratio=cmd.target_ratio or comp.target_ratio,
            quality=cmd.quality,
            evaluate_quality=cmd.evaluate_quality,
        )

    async def compress(self, cmd: CompressCommand, *, wait: bool = False) -> CompressOutcome:
        """Compress one text; `wait` queues for admission (streams) instead of refusing."""
        gate = self.admission.wait() if wait else self.admission.admit()
        clock = StageClock(self.events)
        async with AsyncExitStack() as admitted:
            # A stage of its own, so time spent queued shows up in the breakdown.
            with clock.stage("admission.wait"):
                await admitted.enter_async_context(gate)
            outcome = await self._compress(cmd, clock)
        # On the RPC's (or batch item's) span: what was asked and what came out.
        trace.get_current_span().set_attributes(
            {
                "llmc.mode.requested": outcome.requested_mode.value,
                "llmc.mode": outcome.mode.value,
                "llmc.bytes": outcome.original_bytes,
                "llmc.envelope_bytes": len(outcome.envelope),
                "llmc.degraded": outcome.degraded,
            }
        )
        return outcome

    async def _compress(self, cmd: CompressCommand, clock: StageClock) -> CompressOutcome:
        limit = self.config.compression.max_text_bytes
        with clock.stage("validate") as span:
            data = cmd.text.encode("utf-8")
            span.set_attribute("llmc.bytes", len(data))
            if len(data) > limit:
                raise InvalidInput(
                    f"text is {len(data)} bytes, above this server's limit of {limit} bytes "
                    "(compression.max_text_bytes); split it into smaller items"
                )
        requested = cmd.mode or self.config.compression.default_mode
        mode, reason = requested, ""
        if not cmd.text.strip():
            # Nothing for a model to work on; a tiny exact envelope loses nothing.
            mode, reason = Mode.ZSTD, "empty or whitespace-only text is stored as ZSTD"
        codec, opts = self._codec(mode), self.options(cmd)

        async def compute() -> CachedResult:
            encoded = await self._encode(codec, mode, cmd.text, opts, clock)
            with clock.stage("pack"):
                blob = seal(data, encoded.envelope, encoded.model)
            return CachedResult(
                envelope=blob,
                mode=Mode.from_pb(encoded.envelope.mode),
                model=encoded.model.name if encoded.model else "",
                backend=encoded.backend,
                degraded=encoded.degraded,
                reason=encoded.reason or reason,
                quality=encoded.quality,
            )

        key = None
        if self.cache is not None and not cmd.skip_cache:
            key = key_for(codec, data, mode, opts)
        if self.cache is None or key is None:
            result, hit = await compute(), False
        else:
            result, source = await self.cache.resolve(key, data, compute, clock)
            hit = source != "computed"
        return CompressOutcome(
            envelope=result.envelope,
            original_bytes=len(data),
            requested_mode=requested,
            mode=result.mode,
            model=result.model,
            backend=result.backend,
            stages=clock.timings,
            cache_hit=hit,
            degraded=result.degraded,
            reason=result.reason,
            quality=result.quality,
            total_seconds=clock.total,
        )

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()

    async def _encode(
        self, codec: Codec, mode: Mode, text: str, opts: CompressOptions, clock: StageClock
    ) -> Encoded:
        """The codec's answer; ZSTD marked degraded when no model backend could answer."""
        with collect_fallbacks() as fallbacks:
            try:
                encoded = await codec.encode(text, opts, clock)
            except BackendError as exc:
                if mode is Mode.ZSTD or not self.config.llm.allow_degraded:
                    raise
                # Per item, so debug; the pool logs each endpoint's cooldown once.
                log.debug("%s mode fell back to ZSTD: %s", mode.value, exc)
                encoded = await self._codec(Mode.ZSTD).encode(text, opts, clock)
                encoded.degraded = True
                encoded.reason = f"stored as ZSTD: no model backend answered ({exc})"
                return encoded
        if fallbacks and not encoded.degraded:
            encoded.degraded = True
            encoded.reason = encoded.reason or "; ".join(fallbacks)
        return encoded

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
        decoded = await self.codecs[mode].decode(env, clock)
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


__all__ = ["Pipeline"]
