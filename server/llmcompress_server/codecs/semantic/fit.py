"""Fitting a SEMANTIC body to the target size: the largest summary whose envelope fits.

`fit_words` trims an abstractive summary word by word (brotli-packed body);
`fit_packed` picks how many ranked sentences an extractive body keeps;
`fit_coded` does either for a body coded by the LOSSLESS coder, whose size is
only known after a coding pass. Sentences (or summary words) come first and facts
get the room they leave, most wanted kinds first; only a coded abstractive body
(`trimmed`, a rarely chosen variant) still stores every fact its summary misses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmcompress.v1 import compression_pb2 as pb

from ...entities import Entity
from ...envelope import ModelIdentity, seal
from ...extractive import Ranked
from ...stages import StageClock
from ...summarize import trim_words
from .. import CompressOptions, Encoded
from ..lossless import LosslessCodec
from . import summary_coding
from .body import leftover_facts, pack_body, pack_body_off_loop, residual_facts

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
# The most raw text shrinks in a body, coded (above the best measured on the bench
# passages) or brotli-packed (a short sentence, with brotli's dictionary): a body room
# smaller than a sentence over this cannot hold that sentence.
BEST_RATIO_CODED = 6.0
BEST_RATIO_PACKED = 1.5
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
    """Candidates of an extract: the best-ranked sentences that fit in n bytes, in the
    original's structure, then the facts they miss that fit in what is left."""

    def candidate(n: int) -> tuple[str, list[Entity]]:
        cut = ranked.pick(n)
        room = n - len(cut.encode("utf-8")) - len(summary_coding.FACTS_MARK)
        return cut, leftover_facts(cut, entities, room)

    return candidate


def body_room(
    data: bytes, target: float, model: ModelIdentity | None, coder: LosslessCodec | None
) -> float:
    """Bytes the target size leaves for the body after the envelope's header (coded bodies
    also carry the coder's fingerprint)."""
    if coder is None:
        empty = pb.SemanticBody(extractive=True)
    else:
        empty = pb.SemanticBody(
            coded=pb.LosslessBody(fingerprint=coder.fingerprint, n_tokens=1), extractive=True
        )
    return target - len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=empty), model))


async def summary_budget(data: bytes, target: float, model: ModelIdentity, coded: bool) -> float:
    """Raw summary bytes to ask the model for: the room the envelope leaves after its header,
    over the size a summary packs (or codes) to. A little more than fits raw; `fit_words` or
    `fit_coded` trims it to the real size afterwards, and facts get what is left."""
    overhead = len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC), model))
    fraction = 1 / _CODED_RATIO if coded else _PACKED_FRACTION
    return (target - overhead) / fraction


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
        envelope=pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body), model=model, backend=backend
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
    """The most summary words whose envelope meets the target size, then the facts they
    miss while they still fit (most wanted kinds first: `leftover_facts`'s order).

    At least a few words always remain, so a text can miss the target ratio; it never
    loses its summary to its facts.
    """
    split = summary.split()
    # Everything in the envelope but its body is the same for every cut: seal once.
    sealed = pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=pb.SemanticBody())
    seal(data, sealed, model)

    def size(cut: str, facts: list[Entity], quality: int) -> int:
        sealed.semantic.CopyFrom(pack_body(cut, facts, quality))
        return len(sealed.SerializeToString(deterministic=True))

    # Binary search on a fast brotli level, then exact (q11) sizes, stepping back a word
    # at a time in the rare case the winner is larger.
    floor = min(words, 8)
    lo, hi, fit = floor, words, floor
    while lo <= hi:
        mid = (lo + hi) // 2
        if size(" ".join(split[:mid]), [], 5) <= target:
            fit, lo = mid, mid + 1
        else:
            hi = mid - 1
    cut = trim_words(summary, fit)
    while size(cut, [], 11) > target and fit > floor:
        fit -= 1
        cut = trim_words(summary, fit)
    facts: list[Entity] = []
    for fact in leftover_facts(cut, entities, int(target)):
        if size(cut, [*facts, fact], 11) <= target:
            facts.append(fact)
    return await pack_body_off_loop(cut, facts)
