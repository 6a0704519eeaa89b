"""Fitting a SEMANTIC body to the target size: the largest summary whose envelope fits.

`fit_words` trims an abstractive summary word by word (brotli-packed body);
`fit_packed` picks how many ranked sentences an extractive body keeps;
`fit_coded` does either for a body coded by the LOSSLESS coder, whose size is
only known after a coding pass. Facts are never dropped: a text dense with
entities can miss the target; it never loses them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmcompress.v1 import compression_pb2 as pb

from ...entities import Entity, missing_entities
from ...envelope import ModelIdentity, seal
from ...extractive import Ranked
from ...stages import StageClock
from ...summarize import trim_words
from .. import CompressOptions, Encoded
from ..lossless import LosslessCodec
from . import summary_coding
from .body import pack_body, pack_body_off_loop, residual_facts

log = logging.getLogger(__name__)

# Assumed packed/raw size of a short English summary under brotli -q 11.
_PACKED_FRACTION = 0.8
# Assumed raw/coded size of a summary plus facts under the LOSSLESS coder, for
# the summary's budget; fit_coded measures the real one.
_CODED_RATIO = 3.5
# Assumed raw/coded size of a summary plus facts under the LOSSLESS coder: a
# first guess only (measured 2.7-5.5x on the bench passages, rising with
# length as the model gains context); the fit measures the real one after the
# first coding pass.
_CODED_RATIO_MAX = 5.0
# Coding passes the fit may spend to meet the target size (each costs about
# a token-by-token pass over the summary).
_CODED_PASSES = 3

# The text size knob of a candidate body -> (summary, residual facts).
Candidate = Callable[[int], tuple[str, list[Entity]]]


def trimmed(summary: str, entities: list[Entity]) -> Candidate:
    """Candidates of an abstractive summary: its first n words."""

    def candidate(n: int) -> tuple[str, list[Entity]]:
        cut = trim_words(summary, n)
        return cut, residual_facts(cut, entities)

    return candidate


def picked(ranked: Ranked, entities: list[Entity]) -> Candidate:
    """Candidates of an extract: the best-ranked sentences that fit in n bytes, in order."""

    def candidate(n: int) -> tuple[str, list[Entity]]:
        cut = ranked.pick(n)
        return cut, residual_facts(cut, entities)

    return candidate


async def summary_budget(
    data: bytes, target: float, entities: list[Entity], model: ModelIdentity, coded: bool
) -> float:
    """Raw summary bytes to ask the model for: the room the envelope leaves after its header
    and the facts alone, over the size a summary packs (or codes) to. A little more than
    fits raw; `fit_words` or `fit_coded` trims it to the real size afterwards."""
    overhead = len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC), model))
    facts_only = len((await pack_body_off_loop("", entities)).SerializeToString())
    fraction = 1 / _CODED_RATIO if coded else _PACKED_FRACTION
    return (target - overhead - facts_only) / fraction


def fit_packed(candidate: Candidate, hi: int, data: bytes, target: float) -> pb.SemanticBody:
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


async def fit_coded(
    coder: LosslessCodec,
    data: bytes,
    target: float,
    candidate: Candidate,
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
        envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body),
        model=model,
        backend=backend,
        piecewise_bytes=coded.piecewise_bytes,
    )
    return encoded, plain


async def fit_words(
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
