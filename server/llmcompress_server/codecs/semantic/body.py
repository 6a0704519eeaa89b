"""A SEMANTIC body: the summary and the facts it misses, plain or brotli-packed, and read back.

Decode requires `facts + extract_entities(summary)`. A body stores the entities its summary
misses only in the room the summary leaves, most wanted kinds first (`leftover_facts`): a
fact on the Facts line, out of context, is the last resort (an abstractive expansion is asked
to weave the stored ones in). Some entities are kept whatever they cost (`kept_entities`:
identifiers, and a grouped item's own difference from its group): the summary shrinks to make
room for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import brotli

from llmcompress_proto.v1 import compression_pb2 as pb

from ...core.errors import DataLoss
from .entities import Entity, extract_entities, missing_entities
from .quality import with_facts_line

# Kinds a reader asks for by value come first on a Facts line short of room; names last
# (a name out of context says least, and the extract's sentences hold most of them).
# Identifiers and a grouped item's own words come before everything: they are what tells a
# record from its near-duplicates.
_FACT_ORDER = {
    "id": -1,
    "own": -1,
    "date": 0,
    "time": 0,
    "money": 0,
    "percent": 0,
    "email": 0,
    "url": 0,
    "number": 1,
}
_NAME_ORDER = 2


def residual_facts(summary: str, entities: list[Entity]) -> list[Entity]:
    """Entities decode cannot recover from the summary, so they must be stored.

    Decode requires `facts + extract_entities(summary)`; an entity the summary
    contains but that extraction there would not find (its context changed) is
    stored too, so every original entity is required again on decode.
    """
    recoverable = {e.text for e in extract_entities(summary)}
    return [e for e in entities if missing_entities(summary, [e]) or e.text not in recoverable]


def kept_entities(entities: Sequence[Entity], own: Sequence[Entity] = ()) -> list[Entity]:
    """The entities a body stores whatever summary words they cost: the text's identifiers,
    then `own` (a grouped item's words where it differs from its group), each once."""
    kept: list[Entity] = []
    seen: set[str] = set()
    for e in [*(e for e in entities if e.kind == "id"), *own]:
        if e.text not in seen:
            seen.add(e.text)
            kept.append(e)
    return kept


def _needed(extract: str, kept: Entity) -> bool:
    """Whether a kept entity must be stored beside `extract`: always when it is missing from
    it; an identifier also when extraction there would not find it (as `residual_facts`)."""
    if kept.kind == "own":
        return bool(missing_entities(extract, [kept]))
    return bool(residual_facts(extract, [kept]))


def kept_missing(extract: str, kept: Sequence[Entity]) -> list[Entity]:
    """The kept entities (`kept_entities`) a body with this summary or extract must store."""
    return [e for e in kept if _needed(extract, e)]


def fact_bytes(fact: Entity) -> int:
    """Bytes a stored fact takes in a body (its coded layout line: kind, tab, text, newline)."""
    return len(fact.kind.encode("utf-8")) + len(fact.text.encode("utf-8")) + 2


def leftover_facts(
    extract: str, entities: list[Entity], room: int, kept_first: Sequence[Entity] = ()
) -> list[Entity]:
    """Every entity of `kept_first` that `extract` misses, then the other entities it misses
    that fit in what is left of `room` bytes, most wanted kinds first, each kind in order of
    appearance; stored in that order."""
    kept = kept_missing(extract, kept_first)
    room -= sum(fact_bytes(f) for f in kept)
    taken = {f.text for f in kept_first}
    missing = sorted(
        residual_facts(extract, [e for e in entities if e.text not in taken]),
        key=lambda e: _FACT_ORDER.get(e.kind, _NAME_ORDER),
    )
    for fact in missing:
        if fact_bytes(fact) <= room:
            kept.append(fact)
            room -= fact_bytes(fact)
    return kept


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


def keep_extract(body: pb.SemanticBody) -> str:
    """An extractive summary's reconstruction: the sentences, then a final "Facts:" line
    with every stored entity they do not contain."""
    return with_facts_line(body.summary, missing_entities(body.summary, required_entities(body)))
