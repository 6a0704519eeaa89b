"""The SEMANTIC codec: a summary + residual facts in the envelope; reconstruction; quality gate.

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
raises `BelowQuality` (a summary that stays invalid raises `CannotEncode`): the
pipeline falls back as `compression.semantic_fallback` says. Everything decode
needs is in the envelope; the codec holds no per-text state. The body itself is
body.py; fitting it to the target size, fit.py. In a BatchCompress group of
near-duplicates (`grouping.py`), a member first tries its leader's summary and
is gated on the leader's expansion, both adapted to its own text. Every body
keeps the text's identifiers, and a grouped one its own difference from its
group (`grouping.difference`), whatever summary words they cost
(`body.kept_entities`); a member whose difference alone would not fit in the
room its target leaves a body makes its own summary instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

from llmcompress_proto.v1 import compression_pb2 as pb

from ...backends import TextBackend
from ...core.config import Config, QualityGate, SemanticCoder, SemanticSummary
from ...core.dictionary import Dictionary
from ...core.envelope import ModelIdentity, model_name
from ...core.errors import CannotEncode, PreconditionFailed
from ...telemetry.stages import StageClock
from .. import BelowQuality, CompressOptions, Decoded, Encoded, TooShort
from ..lossless import LosslessCodec
from . import summary_coding
from .body import (
    fact_bytes,
    keep_extract,
    kept_entities,
    kept_missing,
    required_entities,
    unpack_body,
)
from .embedder import MiniLMEmbedder
from .entities import Entity, extract_entities, missing_entities
from .extractive import Ranked, Vector, rank_text, read_structure
from .fit import (
    BEST_RATIO_CODED,
    BEST_RATIO_PACKED,
    body_room,
    fit_coded,
    fit_packed,
    fit_words,
    picked,
    summary_budget,
    trimmed,
)
from .grouping import Membership, SharedSummary, adapt, difference
from .quality import score, with_facts_line
from .summarize import (
    EXPAND_SYSTEM,
    SUMMARY_SYSTEM,
    Expansion,
    InvalidSummary,
    Summary,
    expand,
    summarize,
    summary_messages,
)


def _too_short(text: str, opts: CompressOptions, room: float, smallest: int) -> str:
    size = len(text.encode("utf-8"))
    return (
        f"text is {size} bytes: at target ratio {opts.target_ratio:g} the envelope may take "
        f"{size / opts.target_ratio:.0f} bytes, which leaves {max(room, 0):.0f} for the body, "
        f"too few for a whole sentence of the text (the shortest is {smallest} bytes)"
    )


# The minimum content rule for a model's summary: fewer words are no sentence.
_MIN_SUMMARY_WORDS = 4


def _with_content(encoded: Encoded, body: pb.SemanticBody) -> tuple[Encoded, pb.SemanticBody]:
    """`CannotEncode` unless the abstractive body holds a sentence, not just facts."""
    words = len(body.summary.split())
    if words < _MIN_SUMMARY_WORDS:
        raise CannotEncode(
            f"the model's summary kept {words} word(s) within the target size: no sentence"
        )
    return encoded, body


def prompt_version() -> str:
    """A digest of the prompts: editing one changes every SEMANTIC cache key."""
    template = summary_messages("{document}", 0)
    parts = [SUMMARY_SYSTEM, EXPAND_SYSTEM, *(m["content"] for m in template)]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:16]


class SemanticCodec:
    """MODE_SEMANTIC over any `TextBackend`.

    `lossless` is the server's LOSSLESS codec, if it has one: it decodes coded
    bodies, and codes new ones where `compression.semantic_coder` says so.
    `local` says the backend is that codec's embedded engine, which is what
    `auto` picks by (extractive + coded there, abstractive + brotli elsewhere).
    """

    mode = pb.MODE_SEMANTIC
    # Bump when the output for the same text, options and settings changes.
    version = 3

    def __init__(
        self,
        backend: TextBackend,
        config: Config,
        *,
        lossless: LosslessCodec | None = None,
        local: bool = False,
        embedder: MiniLMEmbedder | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.lossless = lossless
        self.embedder = embedder or MiniLMEmbedder()
        comp = config.compression
        if comp.semantic_summary is SemanticSummary.AUTO:
            self.extractive = local
        else:
            self.extractive = comp.semantic_summary is SemanticSummary.EXTRACTIVE
        # The LOSSLESS coder for new bodies, or None for brotli.
        use_coder = comp.semantic_coder is SemanticCoder.LOSSLESS or (
            comp.semantic_coder is SemanticCoder.AUTO and local
        )
        self.coder = lossless if use_coder else None
        self.low_quality_events = 0

    def cache_params(self, opts: CompressOptions) -> dict[str, str | int | float | bool] | None:
        """Everything that shapes a SEMANTIC envelope (the cache's hook)."""
        models = self.backend.cache_identity()
        if models is None:
            return None
        comp = self.config.compression
        params: dict[str, str | int | float | bool] = {
            "codec": "semantic",
            "version": self.version,
            "prompts": prompt_version(),
            "models": models,
            "target_ratio": opts.target_ratio,
            "quality": int(opts.quality),
            "evaluate_quality": opts.evaluate_quality,
            "quality_gate": comp.quality_gate.value,
            "quality_threshold": self.config.model.quality_threshold,
            "embedder": self.embedder.name,
            "max_tokens": comp.max_tokens,
            "expand_max_tokens": comp.expand_max_tokens,
            "temperature": comp.temperature,
            "retries": comp.semantic_retries,
            "escalation": ",".join(comp.semantic_escalation),
            "summary": "extractive" if self.extractive else "abstractive",
            "coder": "lossless" if self.coder else "brotli",
        }
        if self.coder is not None:
            fingerprint = self.coder.fingerprint.SerializeToString(deterministic=True)
            params["coder_fingerprint"] = fingerprint.hex()
            if opts.dictionary is not None and opts.dictionary.primer:
                params["primer"] = opts.dictionary.hex
        return params

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        """The best summary that meets the quality bar; `TooShort` when the target leaves no
        room for a sentence, `CannotEncode` when the model gives no valid summary,
        `BelowQuality` when none meets the bar."""
        comp = self.config.compression
        with clock.stage("semantic.entities") as span:
            entities = extract_entities(text)
            span.set_attribute("llmc.entities", len(entities))
        gate = opts.evaluate_quality or comp.quality_gate is QualityGate.ALWAYS
        # An extract takes no model call: another tier would make the same one.
        tiers: list[str | None] = [None] if self.extractive else [None, *comp.semantic_escalation]
        # A near-duplicate's first try is its group leader's summary, adapted to its text;
        # below the gate it makes its own, as any item does.
        member = opts.group if opts.group is not None and not opts.group.leader else None
        shared = None
        if member is not None and not self.extractive:
            with clock.stage("semantic.group", **{"llmc.group": member.group.leader_id}) as span:
                shared = await self._shared(text, member)
                if member.group.failure is not None:
                    # Near-duplicate text, the same model and prompt: 8 calls a group of
                    # four where 2 tell the same (measured on llama-cpp-python's server).
                    raise CannotEncode(
                        f"SEMANTIC failed: its near-duplicate {member.group.leader_id!r} got "
                        f"no valid summary ({member.group.failure}); not asked again"
                    )
                if shared is not None and not self._difference_fits(
                    text, entities, opts, shared[1]
                ):
                    shared = None
                    span.set_attribute("llmc.group.left", True)
                span.set_attribute("llmc.group.shared_summary", shared is not None)
        attempts: list[tuple[str | None, tuple[SharedSummary, str] | None]] = [
            *([(None, shared)] if shared is not None else []),
            *((tier, None) for tier in tiers),
        ]
        threshold = self.config.model.quality_threshold
        best: Encoded | None = None
        for tier, adapted in attempts:
            document = None
            try:
                if self.extractive:
                    encoded, body, document = await self._encode_extractive(
                        text, entities, opts, clock
                    )
                else:
                    encoded, body = await self._encode_with(
                        text, entities, opts, clock, tier, adapted
                    )
            except InvalidSummary as exc:
                if opts.group is not None and opts.group.leader:
                    opts.group.group.fail(str(exc))
                raise CannotEncode(f"SEMANTIC failed: {exc}") from exc
            if member is not None:
                member.shared = adapted is not None
            if not gate:
                return encoded
            with clock.stage("semantic.gate") as span:
                rebuilt = None
                if adapted is not None:
                    rebuilt = await self._shared_rebuilt(text, body, adapted[0], opts)
                    span.set_attribute("llmc.group.shared_expansion", rebuilt is not None)
                if rebuilt is None:
                    rebuilt, fallbacks = await self._reconstruct(
                        body, len(text.encode("utf-8")), tier
                    )
                    encoded.fallbacks += fallbacks
                    if opts.group is not None and opts.group.leader and tier is None:
                        opts.group.group.publish_rebuilt(rebuilt)
                encoded.quality = await score(
                    text, rebuilt, entities, self.backend, self.embedder, document
                )
            if encoded.quality.overall >= threshold:
                return encoded
            self.low_quality_events += 1
            if best is None or encoded.quality.overall > best.quality.overall:  # type: ignore[union-attr]
                best = encoded
        if member is not None:
            member.shared = False
        assert best is not None and best.quality is not None
        tried = ", ".join(t or "default" for t in tiers)
        reason = (
            f"SEMANTIC quality {best.quality.overall:.3f} is below model.quality_threshold="
            f"{threshold} (model tiers tried: {tried})"
        )
        raise BelowQuality(reason, best)

    async def _encode_with(
        self,
        text: str,
        entities: list[Entity],
        opts: CompressOptions,
        clock: StageClock,
        tier: str | None,
        adapted: tuple[SharedSummary, str] | None = None,
    ) -> tuple[Encoded, pb.SemanticBody]:
        """`adapted`: the group's shared summary and its form for this text, used instead of
        a summary call of its own; a group leader's own summary is published to its group."""
        comp = self.config.compression
        data = text.encode("utf-8")
        # Byte budget of the whole envelope, then of the summary inside it.
        target = len(data) / opts.target_ratio
        # The model's name is stored in the envelope (none for a packaged model);
        # before the first call its length is estimated from the tier's name.
        known = self.backend.default_model() if tier is None else None
        guess = known or ModelIdentity(
            name=tier or self.config.model.embedded.model_name, sha256="0" * 64
        )
        coder = self.coder
        budget = await summary_budget(data, target, guess, coded=coder is not None)
        smallest = Ranked(read_structure(text), []).smallest_whole()
        if budget < smallest:
            raise TooShort(_too_short(text, opts, budget, smallest))
        if adapted is not None:
            summary = Summary(adapted[1], adapted[0].result, attempts=0)
        else:
            with clock.stage("semantic.summarize", **{"llmc.budget_bytes": int(budget)}):
                summary = await summarize(
                    self.backend,
                    text,
                    budget,
                    retries=comp.semantic_retries,
                    temperature=comp.temperature,
                    model=tier,
                )
            if opts.group is not None and opts.group.leader and tier is None:
                opts.group.group.publish(SharedSummary(text, summary.text, summary.result))
        words = summary.text.split()
        kept = self._kept(text, entities, opts)
        if coder is not None:
            coded = await fit_coded(
                coder,
                data,
                target,
                trimmed(summary.text, entities, kept),
                len(words),
                opts,
                clock,
                extractive=False,
                backend=summary.result.backend,
            )
            if coded is not None:
                coded[0].fallbacks += summary.result.fallbacks
                return _with_content(*coded)
        with clock.stage("semantic.facts"):
            model = summary.result.model
            body = await fit_words(summary.text, entities, data, target, model, len(words), kept)
        encoded = Encoded(
            envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body),
            model=model,
            backend=summary.result.backend,
            fallbacks=list(summary.result.fallbacks),
        )
        return _with_content(encoded, unpack_body(body))

    async def _encode_extractive(
        self, text: str, entities: list[Entity], opts: CompressOptions, clock: StageClock
    ) -> tuple[Encoded, pb.SemanticBody, Vector | None]:
        """The extract that fills the target size, coded or brotli-packed, and the text's
        embedding; no model call except the coder's. `TooShort` when the room the target
        leaves cannot hold a whole sentence of the text."""
        data = text.encode("utf-8")
        target = len(data) / opts.target_ratio
        coder = self.coder
        model = None
        if coder is not None:
            await coder.engine.start()
            model = coder.engine.identity
        # Before any embedding: no body the target leaves room for can hold a sentence.
        structure = read_structure(text)
        room = body_room(data, target, model, coder)
        best_ratio = BEST_RATIO_CODED if coder is not None else BEST_RATIO_PACKED
        smallest = Ranked(structure, []).smallest_whole()
        if smallest == 0 or room * best_ratio < smallest:
            raise TooShort(_too_short(text, opts, room, smallest))
        with clock.stage("semantic.rank") as span:
            ranked = await asyncio.to_thread(rank_text, self.embedder, text, entities, structure)
            span.set_attribute("llmc.sentences", len(structure.units))
        candidate = picked(ranked, entities, self._kept(text, entities, opts))
        found = None
        if coder is not None:
            found = await fit_coded(
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
        if found is not None:
            encoded, plain = found
        else:
            with clock.stage("semantic.facts"):
                body = fit_packed(candidate, len(data), data, target)
            body.extractive = True
            plain = unpack_body(body)
            plain.extractive = True
            encoded = Encoded(envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body))
        # The minimum content rule: a body of facts alone is an empty shell, not a summary.
        if not ranked.holds_whole(plain.summary):
            raise TooShort(_too_short(text, opts, room, smallest))
        return encoded, plain, ranked.document

    @staticmethod
    def _kept(text: str, entities: list[Entity], opts: CompressOptions) -> list[Entity]:
        """The entities this body keeps whatever they cost: its identifiers, and in a group
        what tells it apart from the group (taken when its body is fitted, so a leader is
        told apart from every member that joined while its summary was made)."""
        own = difference(opts.group, text) if opts.group is not None else []
        return kept_entities(entities, own)

    def _difference_fits(
        self, text: str, entities: list[Entity], opts: CompressOptions, adapted: str
    ) -> bool:
        """Whether the kept entities the adapted shared summary misses fit in the room the
        target leaves a body: a difference larger than that costs more than a summary of
        the item's own."""
        data = text.encode("utf-8")
        room = body_room(data, len(data) / opts.target_ratio, None, self.coder)
        missing = kept_missing(adapted, self._kept(text, entities, opts))
        return sum(fact_bytes(e) for e in missing) <= room

    @staticmethod
    async def _shared(text: str, member: Membership) -> tuple[SharedSummary, str] | None:
        """The group leader's summary and its form for `text`; None when the leader has none
        or it states a fact of the leader's text that `text` lacks."""
        shared = await member.group.summary()
        if shared is None:
            return None
        adapted = adapt(shared, text)
        return None if adapted is None else (shared, adapted)

    async def _shared_rebuilt(
        self, text: str, body: pb.SemanticBody, shared: SharedSummary, opts: CompressOptions
    ) -> str | None:
        """What this member's expansion is scored as: the leader's expansion of the shared
        summary, adapted to `text` like the summary, with this body's entities it lacks on a
        Facts line (as decode appends them). None: no such expansion; expand this body."""
        assert opts.group is not None
        rebuilt = await opts.group.group.rebuilt()
        if rebuilt is None:
            return None
        adapted = adapt(dataclasses.replace(shared, summary=rebuilt), text)
        if adapted is None:
            return None
        return with_facts_line(adapted, missing_entities(adapted, required_entities(body)))

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

    async def _open(
        self, env: pb.Envelope, clock: StageClock, dictionary: Dictionary | None = None
    ) -> pb.SemanticBody:
        """The plain body (summary, facts, extractive) of a stored one; `dictionary`: the
        one its coded body was coded with."""
        stored = env.semantic
        if not stored.HasField("coded"):
            body = unpack_body(stored)
        else:
            coder = self.lossless
            if coder is None:
                raise PreconditionFailed(
                    "this SEMANTIC envelope's summary is coded with the embedded model, and "
                    "this server has no embedded engine; reconstruct it on a server that has"
                )
            with clock.stage("semantic.decode", **{"llmc.tokens": stored.coded.n_tokens}):
                primer = await coder.primer_tokens(dictionary)
                coded = await summary_coding.decode_text(coder, env, primer)
                body = summary_coding.parse_coded_text(coded)
        body.extractive = stored.extractive
        return body

    async def _reconstruct(
        self, body: pb.SemanticBody, original_bytes: int, tier: str | None
    ) -> tuple[str, list[str]]:
        """What decode would give back, and the model fallbacks taken to make it."""
        if body.extractive:
            return keep_extract(body), []
        expansion = await self._expand(body, original_bytes, tier)
        return expansion.text, [note for r in expansion.results for note in r.fallbacks]

    async def decode(
        self, env: pb.Envelope, clock: StageClock, dictionary: Dictionary | None = None
    ) -> Decoded:
        body = await self._open(env, clock, dictionary)
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
