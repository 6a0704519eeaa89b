"""SEMANTIC mode: LLM summary + residual facts in the envelope; LLM expansion back; quality gate.

Encode: entities -> budgeted JSON summary -> residual facts -> packed body.
Decode: expand the summary, weave in every stored entity (re-prompt, then a
final "Facts:" line), so stored-entity recall is 1.0 by construction. With
`evaluate_quality`, encode reconstructs and scores its own envelope; below
`model.quality_threshold` it escalates through the configured tiers, then
falls back to LOSSLESS or ZSTD as configured. Everything decode needs is in
the envelope; the codec holds no per-text state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping

import brotli

from ..backends import TextBackend
from ..backends.embedded import EmbeddedEngine
from ..backends.router import BackendRouter
from ..config import Config, Mode, SemanticFallback
from ..embedder import MiniLMEmbedder
from ..entities import Entity, extract_entities, missing_entities
from ..envelope import ModelIdentity, seal
from ..errors import DataLoss
from ..pb import compression_pb2 as pb
from ..quality import score
from ..stages import StageClock
from ..summarize import (
    EXPAND_SYSTEM,
    SUMMARY_SYSTEM,
    Expansion,
    InvalidSummary,
    expand,
    summarize,
    summary_messages,
    trim_words,
)
from . import Codec, CompressOptions, Decoded, Encoded

log = logging.getLogger(__name__)

# Assumed packed/raw size of a short English summary under brotli -q 11.
_PACKED_FRACTION = 0.8

# Called with (overall score, threshold) for every evaluation below the threshold.
LowQualityObserver = Callable[[float, float], None]


def residual_facts(summary: str, entities: list[Entity]) -> list[Entity]:
    """Entities decode cannot recover from the summary, so they must be stored.

    Decode requires `facts + extract_entities(summary)`; an entity the summary
    contains but that extraction there would not find (its context changed) is
    stored too, so every original entity is required again on decode.
    """
    recoverable = {e.text for e in extract_entities(summary)}
    return [e for e in entities if missing_entities(summary, [e]) or e.text not in recoverable]


def required_entities(body: pb.SemanticBody) -> list[Entity]:
    facts = [Entity(f.kind, f.text) for f in body.facts]
    known = {f.text for f in facts}
    return facts + [e for e in extract_entities(body.summary) if e.text not in known]


def pack_body(summary: str, facts: list[Entity], quality: int = 11) -> pb.SemanticBody:
    """The smaller of the plain body and its brotli-packed form (`quality` < 11 only
    to estimate sizes quickly: q11 costs ~4 ms a call on these small bodies)."""
    plain = pb.SemanticBody(
        summary=summary, facts=[pb.Entity(kind=f.kind, text=f.text) for f in facts]
    )
    raw = plain.SerializeToString(deterministic=True)
    packed = brotli.compress(raw, quality=quality, lgwin=16)
    if len(packed) + 3 < len(raw):
        return pb.SemanticBody(packed=packed)
    return plain


async def pack_body_off_loop(summary: str, facts: list[Entity]) -> pb.SemanticBody:
    """`pack_body` in a worker thread. brotli -q 11 takes 1-3 ms a body and releases
    the GIL while it works, so the event loop serves the other items meanwhile."""
    return await asyncio.to_thread(pack_body, summary, facts)


def unpack_body(body: pb.SemanticBody) -> pb.SemanticBody:
    if not body.packed:
        return body
    try:
        inner = pb.SemanticBody.FromString(brotli.decompress(body.packed))
    except Exception:  # brotli.error or a protobuf DecodeError: the bytes are bad either way
        raise DataLoss(
            "the SEMANTIC envelope's packed body is corrupt; restore it from a good copy"
        ) from None
    return inner


def prompt_version() -> str:
    """A digest of the prompts: editing one changes every SEMANTIC cache key."""
    template = summary_messages("{document}", 0)
    parts = [SUMMARY_SYSTEM, EXPAND_SYSTEM, *(m["content"] for m in template)]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:16]


def backend_identity(backend: TextBackend) -> str | None:
    """Which models answer a non-degraded call; None while that is not known yet.

    Through the router only the first route's models answer without a fallback
    (fallbacks mark the result degraded, and degraded results are not cached),
    but every route, endpoint and tier is named: editing any of them is a new key.
    """
    if isinstance(backend, BackendRouter):
        routes = [
            f"{r.pool.name}[{','.join(e.url for e in r.pool.endpoints)}]="
            f"{r.models.low},{r.models.standard},{r.models.high}"
            for r in backend.routes
        ]
        return ";".join(routes)
    if isinstance(backend, EmbeddedEngine):
        if not backend.started:
            return None
        return f"embedded:{backend.identity.name}:{backend.identity.sha256}"
    return None  # a backend that cannot name its model is never cached


class SemanticCodec:
    mode = pb.MODE_SEMANTIC
    # Bump when the output for the same text, options and settings changes.
    version = 1

    def __init__(
        self,
        backend: TextBackend,
        config: Config,
        codecs: Mapping[Mode, Codec],
        embedder: MiniLMEmbedder | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        # The server's codec table, read at call time so a LOSSLESS codec
        # registered after this one is still found for the fallback.
        self.codecs = codecs
        self.embedder = embedder or MiniLMEmbedder()
        self.low_quality_events = 0
        self._low_quality_observers: list[LowQualityObserver] = []

    def add_low_quality_observer(self, observer: LowQualityObserver) -> None:
        self._low_quality_observers.append(observer)

    def cache_params(self, opts: CompressOptions) -> dict[str, str | int | float | bool] | None:
        """Everything that shapes a SEMANTIC envelope (cache.py's hook)."""
        models = backend_identity(self.backend)
        if models is None:
            return None
        comp = self.config.compression
        return {
            "codec": "semantic",
            "version": self.version,
            "prompts": prompt_version(),
            "models": models,
            "target_ratio": opts.target_ratio,
            "quality": int(opts.quality),
            "evaluate_quality": opts.evaluate_quality,
            "quality_threshold": self.config.model.quality_threshold,
            "embedder": self.embedder.name,
            "min_compress_length": comp.min_compress_length,
            "max_tokens": comp.max_tokens,
            "expand_max_tokens": comp.expand_max_tokens,
            "temperature": comp.temperature,
            "retries": comp.semantic_retries,
            "escalation": ",".join(comp.semantic_escalation),
            "fallback": comp.semantic_fallback.value,
            "zstd_level": comp.zstd_level,
        }

    def _fallback(self) -> Codec | None:
        choice = self.config.compression.semantic_fallback
        if choice is SemanticFallback.NONE:
            return None
        if choice is SemanticFallback.LOSSLESS and Mode.LOSSLESS in self.codecs:
            return self.codecs[Mode.LOSSLESS]
        return self.codecs[Mode.ZSTD]

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        comp = self.config.compression
        if len(text) < comp.min_compress_length:
            encoded = await self.codecs[Mode.ZSTD].encode(text, opts, clock)
            encoded.reason = (
                f"text is {len(text)} characters, below compression.min_compress_length="
                f"{comp.min_compress_length}: stored as ZSTD (a summary would not be smaller)"
            )
            return encoded
        with clock.stage("semantic.entities") as span:
            entities = extract_entities(text)
            span.set_attribute("llmc.entities", len(entities))
        tiers: list[str | None] = [None, *comp.semantic_escalation]
        threshold = self.config.model.quality_threshold
        best: Encoded | None = None
        for tier in tiers:
            try:
                encoded = await self._encode_with(text, entities, opts, clock, tier)
            except InvalidSummary as exc:
                return await self._fall_back(text, opts, clock, f"SEMANTIC failed: {exc}", None)
            if not opts.evaluate_quality:
                return encoded
            with clock.stage("semantic.evaluate"):
                body = unpack_body(encoded.envelope.semantic)
                expansion = await self._expand(body, len(text.encode("utf-8")), tier)
                encoded.quality = await score(
                    text, expansion.text, entities, self.backend, self.embedder
                )
            if encoded.quality.overall >= threshold:
                return encoded
            self.low_quality_events += 1
            for observer in self._low_quality_observers:
                observer(encoded.quality.overall, threshold)
            if best is None or encoded.quality.overall > best.quality.overall:  # type: ignore[union-attr]
                best = encoded
        assert best is not None and best.quality is not None
        tried = ", ".join(t or "default" for t in tiers)
        reason = (
            f"SEMANTIC quality {best.quality.overall:.3f} is below model.quality_threshold="
            f"{threshold} (model tiers tried: {tried})"
        )
        return await self._fall_back(text, opts, clock, reason, best)

    async def _fall_back(
        self,
        text: str,
        opts: CompressOptions,
        clock: StageClock,
        reason: str,
        semantic: Encoded | None,
    ) -> Encoded:
        codec = self._fallback()
        if codec is None:
            if semantic is None:
                raise InvalidSummary(f"{reason}; compression.semantic_fallback=none")
            semantic.degraded = True
            semantic.reason = f"{reason}; kept as SEMANTIC (compression.semantic_fallback=none)"
            return semantic
        encoded = await codec.encode(text, opts, clock)
        stored = pb.Mode.Name(encoded.envelope.mode)
        encoded.degraded = True
        encoded.reason = f"{reason}; stored as {stored} (compression.semantic_fallback)"
        # The scores of the rejected SEMANTIC attempt: they say why.
        encoded.quality = semantic.quality if semantic is not None else None
        return encoded

    async def _encode_with(
        self,
        text: str,
        entities: list[Entity],
        opts: CompressOptions,
        clock: StageClock,
        tier: str | None,
    ) -> Encoded:
        comp = self.config.compression
        data = text.encode("utf-8")
        # Byte budget of the whole envelope, then of the summary inside it.
        target = len(data) / opts.target_ratio
        # The model's name is stored in the envelope; before the first call
        # its length is estimated from tier or the embedded model's name.
        guess = ModelIdentity(name=tier or self.config.model.embedded.model_name, sha256="0" * 64)
        overhead = len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC), guess))
        facts_only = len((await pack_body_off_loop("", entities)).SerializeToString())
        # Ask for a little more than fits raw: brotli packs the summary, and
        # `_fit` trims it to the real envelope size afterwards.
        budget = (target - overhead - facts_only) / _PACKED_FRACTION
        with clock.stage("semantic.summarize", **{"llmc.budget_bytes": int(budget)}):
            summary = await summarize(
                self.backend,
                text,
                budget,
                retries=comp.semantic_retries,
                temperature=comp.temperature,
                model=tier,
            )
        with clock.stage("semantic.facts"):
            words = summary.text.split()
            model = summary.result.model
            body = await self._fit(summary.text, entities, data, target, model, len(words))
        return Encoded(
            envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body),
            model=model,
            backend=summary.result.backend,
        )

    @staticmethod
    async def _fit(
        summary: str,
        entities: list[Entity],
        data: bytes,
        target: float,
        model: ModelIdentity,
        words: int,
    ) -> pb.SemanticBody:
        """Drop trailing summary words until the envelope meets the target size.

        Facts are never dropped, and at least a few words always remain, so a
        text dense with entities can miss the target ratio; it never loses them.
        """
        split = summary.split()
        # Everything in the envelope but its body is the same for every cut: seal once.
        sealed = pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=pb.SemanticBody())
        seal(data, sealed, model)

        def estimate(n: int) -> int:
            # A fast brotli level and the facts a substring test finds (residual_facts
            # without its extraction pass): close to the exact size at a fraction of the CPU.
            cut = " ".join(split[:n])
            sealed.semantic.CopyFrom(pack_body(cut, missing_entities(cut, entities), 5))
            return len(sealed.SerializeToString(deterministic=True))

        async def exact(n: int) -> tuple[pb.SemanticBody, int]:
            cut = trim_words(summary, n)
            body = await pack_body_off_loop(cut, residual_facts(cut, entities))
            env = pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body)
            return body, len(seal(data, env, model))

        # Binary search on the estimates, then one exact pack (q11, exact facts) of
        # the winner, stepping back a word at a time in the rare case it is larger.
        floor = min(words, 8)
        lo, hi, fit = floor, words, floor
        while lo <= hi:
            mid = (lo + hi) // 2
            if estimate(mid) <= target:
                fit, lo = mid, mid + 1
            else:
                hi = mid - 1
        body, size = await exact(fit)
        while size > target and fit > floor:
            fit -= 1
            body, size = await exact(fit)
        return body

    async def _expand(
        self, body: pb.SemanticBody, original_bytes: int, tier: str | None
    ) -> Expansion:
        comp = self.config.compression
        return await expand(
            self.backend,
            body.summary,
            [Entity(f.kind, f.text) for f in body.facts],
            required_entities(body),
            original_bytes,
            retries=comp.semantic_retries,
            max_tokens=comp.expand_max_tokens,
            model=tier,
        )

    async def decode(self, env: pb.Envelope, clock: StageClock) -> Decoded:
        body = unpack_body(env.semantic)
        required = required_entities(body)
        with clock.stage("semantic.expand", **{"llmc.entities": len(required)}):
            expansion = await self._expand(body, env.original_length, None)
        model = expansion.results[0].model.name if expansion.results else ""
        # Without the original only entity recall can be scored here; the
        # similarity and chrF scores come from Compress with evaluate_quality.
        recall = 1.0 - len(missing_entities(expansion.text, required)) / max(len(required), 1)
        quality = pb.QualityScores(entity_recall=recall)
        return Decoded(text=expansion.text, exact=False, model=model, quality=quality)
