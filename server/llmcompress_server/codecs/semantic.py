"""SEMANTIC mode: a summary + residual facts in the envelope; reconstruction; quality gate.

Encode: entities -> summary -> residual facts -> packed body. The summary is
abstractive (a budgeted JSON summary by the model) or extractive (the
original's most representative sentences, verbatim: `extractive.py`);
`compression.semantic_summary: auto` picks extractive on the embedded engine,
where SmolLM2-135M's summaries and expansions measured poor, and abstractive on
Ollama/OpenAI. The body is packed with brotli, or coded with the LOSSLESS
coder (`compression.semantic_coder`, auto: on the embedded engine), which
fits about twice the summary in the same bytes.
Decode: an abstractive summary is expanded and every stored entity woven in
(re-prompt, then a final "Facts:" line). An extractive summary is kept as it
is, followed by the "Facts:" line: on bench.semantic's 6 passages at target 8
that scored median similarity 0.905 against 0.742 for the 135M model's
expansion of the same extract (`--expand`), and needs no model call. Either
way stored-entity recall is 1.0 by construction. With
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

from llmcompress.v1 import compression_pb2 as pb

from ..backends import TextBackend
from ..backends.embedded import EmbeddedEngine
from ..backends.router import BackendRouter
from ..config import Config, SemanticCoder, SemanticFallback, SemanticSummary
from ..domain import Mode
from ..embedder import MiniLMEmbedder
from ..entities import Entity, extract_entities, missing_entities
from ..envelope import ModelIdentity, model_name, seal
from ..errors import DataLoss, PreconditionFailed
from ..extractive import rank_text
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
from . import Codec, CompressOptions, Decoded, Encoded, summary_coding
from .lossless import LosslessCodec

log = logging.getLogger(__name__)

# Assumed packed/raw size of a short English summary under brotli -q 11.
_PACKED_FRACTION = 0.8

# Assumed raw/coded size of a summary plus facts under the LOSSLESS coder: a
# first guess only (measured 2.7-5.5x on the bench passages, rising with
# length as the model gains context); the fit measures the real one after the
# first coding pass.
_CODED_RATIO = 3.5
_CODED_RATIO_MAX = 5.0
# Coding passes the fit may spend to meet the target size (each costs about
# a token-by-token pass over the summary).
_CODED_PASSES = 3

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
    version = 2

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
            **self._body_params(),
        }

    def _body_params(self) -> dict[str, str | int | float | bool]:
        coder = self._coder()
        params: dict[str, str | int | float | bool] = {
            "summary": "extractive" if self._extractive() else "abstractive",
            "coder": "lossless" if coder else "brotli",
        }
        if coder is not None:
            params["coder_fingerprint"] = coder.fingerprint.SerializeToString(
                deterministic=True
            ).hex()
        if self._extractive():
            params["embedder"] = self.embedder.name
        return params

    def _extractive(self) -> bool:
        choice = self.config.compression.semantic_summary
        if choice is SemanticSummary.AUTO:
            return isinstance(self.backend, EmbeddedEngine)
        return choice is SemanticSummary.EXTRACTIVE

    def _coder(self) -> LosslessCodec | None:
        """The LOSSLESS coder for SEMANTIC bodies, or None for brotli."""
        choice = self.config.compression.semantic_coder
        coder = self.codecs.get(Mode.LOSSLESS)
        if choice is SemanticCoder.BROTLI or not isinstance(coder, LosslessCodec):
            return None
        if choice is SemanticCoder.AUTO and coder.engine is not self.backend:
            return None
        return coder

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
                if self._extractive():
                    encoded, body = await self._encode_extractive(text, entities, opts, clock)
                else:
                    encoded, body = await self._encode_with(text, entities, opts, clock, tier)
            except InvalidSummary as exc:
                return await self._fall_back(text, opts, clock, f"SEMANTIC failed: {exc}", None)
            if not opts.evaluate_quality:
                return encoded
            with clock.stage("semantic.evaluate"):
                rebuilt = await self._reconstruct(body, len(text.encode("utf-8")), tier)
                encoded.quality = await score(text, rebuilt, entities, self.backend, self.embedder)
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
    ) -> tuple[Encoded, pb.SemanticBody]:
        comp = self.config.compression
        data = text.encode("utf-8")
        # Byte budget of the whole envelope, then of the summary inside it.
        target = len(data) / opts.target_ratio
        # The model's name is stored in the envelope (none for a packaged model);
        # before the first call its length is estimated from the tier's name.
        backend = self.backend
        if tier is None and isinstance(backend, EmbeddedEngine) and backend.started:
            guess = backend.identity
        else:
            guess = ModelIdentity(
                name=tier or self.config.model.embedded.model_name, sha256="0" * 64
            )
        overhead = len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC), guess))
        facts_only = len((await pack_body_off_loop("", entities)).SerializeToString())
        # Ask for a little more than fits raw: brotli packs the summary, and
        # `_fit` trims it to the real envelope size afterwards.
        coder = self._coder()
        fraction = 1 / _CODED_RATIO if coder is not None else _PACKED_FRACTION
        budget = (target - overhead - facts_only) / fraction
        with clock.stage("semantic.summarize", **{"llmc.budget_bytes": int(budget)}):
            summary = await summarize(
                self.backend,
                text,
                budget,
                retries=comp.semantic_retries,
                temperature=comp.temperature,
                model=tier,
            )
        words = summary.text.split()
        if coder is not None:

            def candidate(n: int) -> tuple[str, list[Entity]]:
                cut = trim_words(summary.text, n)
                return cut, residual_facts(cut, entities)

            coded = await self._fit_coded(
                coder,
                data,
                target,
                candidate,
                len(words),
                opts,
                clock,
                extractive=False,
                backend=summary.result.backend,
            )
            if coded is not None:
                return coded
        with clock.stage("semantic.facts"):
            model = summary.result.model
            body = await self._fit(summary.text, entities, data, target, model, len(words))
        return Encoded(
            envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body),
            model=model,
            backend=summary.result.backend,
        ), unpack_body(body)

    async def _encode_extractive(
        self, text: str, entities: list[Entity], opts: CompressOptions, clock: StageClock
    ) -> tuple[Encoded, pb.SemanticBody]:
        """The extract that fills the target size, coded or brotli-packed; no model call
        except the coder's."""
        data = text.encode("utf-8")
        target = len(data) / opts.target_ratio
        with clock.stage("semantic.rank") as span:
            ranked = await asyncio.to_thread(rank_text, self.embedder, text)
            span.set_attribute("llmc.sentences", len(ranked.sentences))

        def candidate(n: int) -> tuple[str, list[Entity]]:
            cut = ranked.pick(n)
            return cut, residual_facts(cut, entities)

        coder = self._coder()
        if coder is not None:
            coded = await self._fit_coded(
                coder,
                data,
                target,
                candidate,
                len(data),
                opts,
                clock,
                extractive=True,
                backend=coder.engine.name,
            )
            if coded is not None:
                return coded
        with clock.stage("semantic.facts"):
            body = self._fit_packed(candidate, len(data), data, target)
        body.extractive = True
        plain = unpack_body(body)
        plain.extractive = True
        return Encoded(envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body)), plain

    @staticmethod
    def _fit_packed(
        candidate: Callable[[int], tuple[str, list[Entity]]], hi: int, data: bytes, target: float
    ) -> pb.SemanticBody:
        """The largest candidate whose brotli-packed envelope meets the target size (the
        smallest when none does: facts are never dropped)."""

        def size(n: int, quality: int) -> tuple[pb.SemanticBody, int]:
            body = pack_body(*candidate(n), quality)
            body.extractive = True
            env = pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body)
            return body, len(seal(data, env))

        lo, fit = 0, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if size(mid, 5)[1] <= target:
                fit, lo = mid, mid + 1
            else:
                hi = mid - 1
        body, got = size(fit, 11)
        while got > target and fit > 0:
            fit = max(0, fit - 64)
            body, got = size(fit, 11)
        return body

    async def _fit_coded(
        self,
        coder: LosslessCodec,
        data: bytes,
        target: float,
        candidate: Callable[[int], tuple[str, list[Entity]]],
        hi: int,
        opts: CompressOptions,
        clock: StageClock,
        *,
        extractive: bool,
        backend: str,
    ) -> tuple[Encoded, pb.SemanticBody] | None:
        """The largest candidate (size knob 0..`hi`) whose coded envelope meets the target
        size, as (the encoded envelope, its plain body); None when the coder cannot store
        it exactly (the caller packs with brotli instead).

        Coded sizes are only known after a coding pass, so the raw size is chosen from
        an assumed coded ratio, which the first pass then measures; at most
        `_CODED_PASSES` passes, keeping the largest that fits (or the smallest).
        """
        await coder.engine.start()
        model = coder.engine.identity

        def envelope_size(body: pb.SemanticBody) -> int:
            return len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body), model))

        empty = pb.SemanticBody(
            coded=pb.LosslessBody(fingerprint=coder.fingerprint, n_tokens=1), extractive=extractive
        )
        room = max(target - envelope_size(empty) - 2, 1.0)
        # Longer texts code better: ~2.7x at 300 raw bytes, ~5x at 2 KB.
        ratio = min(_CODED_RATIO_MAX, 2.5 / max(1.0 - room / 800, 0.5))
        tried: dict[int, tuple[int, str, summary_coding.CodedSummary]] = {}

        def layout(n: int) -> str | None:
            return summary_coding.coded_text(*candidate(n))

        for _ in range(_CODED_PASSES):
            limit = room * ratio
            lo, top, n = 0, hi, 0
            while lo <= top:
                mid = (lo + top) // 2
                text = layout(mid)
                if text is None:
                    return None
                if len(text.encode("utf-8")) <= limit:
                    n, lo = mid, mid + 1
                else:
                    top = mid - 1
            if n in tried:
                break
            text = layout(n)
            if text is None:
                return None
            with clock.stage("semantic.code", **{"llmc.bytes": len(text.encode("utf-8"))}):
                coded = await summary_coding.code(coder, text)
            if coded is None:
                return None
            body = pb.SemanticBody(coded=coded.body, extractive=extractive)
            size = envelope_size(body)
            tried[n] = (size, text, coded)
            if size <= target and (size >= 0.92 * target or n >= hi):
                break
            # The measured ratio, a little under so the next pass lands inside.
            ratio = coded.text_bytes / max(size - (target - room), 1) * 0.97
        fitting = [n for n, (size, _, _) in tried.items() if size <= target]
        best = max(fitting) if fitting else min(tried, key=lambda n: tried[n][0])
        _, text, coded = tried[best]
        if opts.verify:
            with clock.stage("semantic.verify"):
                exact = await summary_coding.round_trips(coder, coded, text)
            if not exact:
                log.error("SEMANTIC coded summary did not round-trip; packing it with brotli")
                return None
        plain = summary_coding.parse_coded_text(text)
        plain.extractive = extractive
        body = pb.SemanticBody(coded=coded.body, extractive=extractive)
        encoded = Encoded(
            envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body), model=model, backend=backend
        )
        return encoded, plain

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

    async def _open(self, env: pb.Envelope, clock: StageClock) -> pb.SemanticBody:
        """The plain body (summary, facts, extractive) of a stored one."""
        stored = env.semantic
        if not stored.HasField("coded"):
            body = unpack_body(stored)
        else:
            coder = self.codecs.get(Mode.LOSSLESS)
            if not isinstance(coder, LosslessCodec):
                raise PreconditionFailed(
                    "this SEMANTIC envelope's summary is coded with the embedded model, and "
                    "this server has no embedded engine; reconstruct it on a server that has"
                )
            with clock.stage("semantic.decode", **{"llmc.tokens": stored.coded.n_tokens}):
                body = summary_coding.parse_coded_text(await summary_coding.decode_text(coder, env))
        body.extractive = stored.extractive
        return body

    async def _reconstruct(
        self, body: pb.SemanticBody, original_bytes: int, tier: str | None
    ) -> str:
        if body.extractive:
            return keep_extract(body)
        return (await self._expand(body, original_bytes, tier)).text

    async def decode(self, env: pb.Envelope, clock: StageClock) -> Decoded:
        body = await self._open(env, clock)
        required = required_entities(body)
        model = model_name(env.model)
        if body.extractive:
            text = keep_extract(body)
        else:
            with clock.stage("semantic.expand", **{"llmc.entities": len(required)}):
                expansion = await self._expand(body, env.original_length, None)
            text = expansion.text
            model = expansion.results[0].model.name if expansion.results else ""
        # Without the original only entity recall can be scored here; the
        # similarity and chrF scores come from Compress with evaluate_quality.
        recall = 1.0 - len(missing_entities(text, required)) / max(len(required), 1)
        quality = pb.QualityScores(entity_recall=recall)
        return Decoded(text=text, exact=False, model=model, quality=quality)


def keep_extract(body: pb.SemanticBody) -> str:
    """An extractive summary's reconstruction: the sentences, then a final "Facts:" line
    with every stored entity they do not contain."""
    missing = missing_entities(body.summary, required_entities(body))
    if not missing:
        return body.summary
    facts = "Facts: " + "; ".join(e.text for e in missing)
    return f"{body.summary}\n{facts}" if body.summary else facts
