"""SEMANTIC's fact ceiling: the most facts an extract can keep at a target ratio, found by an
oracle that knows the questions (`bench.semantic` reports it beside each row).

The oracle picks the units (sentences, clauses, lines: the extract's own pieces,
`extractive.read_structure`) that hold the most of a text's facts within the coded room the
envelope leaves at the target; the facts are then counted as `bench.semantic` counts them
(the answer verbatim in the rendered extract). It chooses by each unit's code length in the
whole original's context (the ideal -log2 p per token, one coding pass), then codes its
extract on its own, and while that passes the room it chooses again on a budget shrunk by
the overshoot. So the extract it reports fits, coded as the codec codes, but for the
range coder's last word and the stream field's 3 bytes, which it is not charged.

No selector can know the questions, so the ceiling is not a goal; it says how much of a
fact-retention goal any extract of these texts, with this model and this header, can reach,
and what share of it the selector reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.semantic_eval import EvalText, kept_facts, normalize
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.codecs.semantic.extractive import Structure, pieces, render
from llmcompress_server.codecs.semantic.fit import body_room
from llmcompress_server.coding.rows import Weights

# The coded stream's own field in the body (tag and length) and n_tokens' second byte:
# what `body_room` (which seals an empty stream of one token) leaves out.
_STREAM_FIELD = 3
# Rounds of choosing and coding before the oracle gives up on a text (keeps nothing).
_ROUNDS = 40


class ContextOverflow(ValueError):
    """The pieces are longer than one context."""


class _Bits:
    """A coder for `code_stream` that codes nothing: it records each known token's ideal
    code length under the model's weights."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = tokens
        self.bits: list[float] = []

    def code(self, weights: Weights) -> int:
        token = self.tokens[len(self.bits)]
        w = np.asarray(weights, dtype=np.float64).ravel()
        self.bits.append(-math.log2(max(float(w[token]), 1e-300) / float(w.sum())))
        return token


async def piece_bits(coder: LosslessCodec, rendered: Sequence[str]) -> list[float]:
    """Per piece of `rendered`, the bits it takes coded after the pieces before it, in
    one coding pass."""
    split = [await coder.tokenize(p.encode("utf-8"), escapes=True) for p in rendered]
    tokens = [t for part in split for t in part.tokens]
    if len(tokens) > coder.n_ctx:
        raise ContextOverflow(f"{len(tokens)} tokens: longer than one context ({coder.n_ctx})")
    bits = _Bits(tokens)
    await coder.code_stream(bits, len(tokens))
    out, at = [], 0
    for part in split:
        out.append(sum(bits.bits[at : at + len(part.tokens)]))
        at += len(part.tokens)
    return out


def best_units(masks: Sequence[int], costs: Sequence[float], budget: float) -> list[int]:
    """Units whose costs fit `budget` and whose fact masks cover the most facts, the
    cheapest such set (exact: the least cost of every reachable set of facts)."""
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for u, (mask, cost) in enumerate(zip(masks, costs, strict=True)):
        if not mask or cost > budget:
            continue
        for have, (spent, chosen) in list(states.items()):
            got, total = have | mask, spent + cost
            if got != have and total <= budget and total < states.get(got, (math.inf,))[0]:
                states[got] = (total, (*chosen, u))
    best = max(states, key=lambda m: (bin(m).count("1"), -states[m][0]))
    return sorted(states[best][1])


class Oracle:
    """The fact ceiling of one text, at any target (its in-context costs measured once)."""

    def __init__(self, coder: LosslessCodec, item: EvalText, structure: Structure) -> None:
        self.coder, self.item, self.structure = coder, item, structure
        self.masks = [
            sum(
                1 << i
                for i, f in enumerate(item.facts)
                if normalize(f.answer) in normalize(structure.blocks[u.block].label + u.text)
            )
            for u in structure.units
        ]
        self._bits: list[float] | None = None

    async def ceiling(self, target: float) -> dict[str, Any] | None:
        """{"facts_kept", "room_bytes", "units", "extract"}: the facts the best fitting
        extract keeps, the coded room it fits, and the extract; None for a text longer than
        one context (its in-context costs cannot be had in one pass)."""
        if self._bits is None:
            everything = pieces(self.structure, range(len(self.structure.units)))
            try:
                self._bits = await piece_bits(self.coder, everything)
            except ContextOverflow:
                return None
        data = self.item.text.encode("utf-8")
        room = body_room(data, len(data) / target, self.coder.engine.identity, self.coder)
        room = max(room - _STREAM_FIELD, 0.0)
        budget, chosen = 8 * room, []
        for _ in range(_ROUNDS):
            pick = best_units(self.masks, self._bits, budget)
            coded = sum(await piece_bits(self.coder, pieces(self.structure, pick))) if pick else 0
            if coded <= 8 * room:
                chosen = pick
                break
            # Below this pick's own in-context cost, so the next one differs.
            budget = min(budget, sum(self._bits[u] for u in pick)) * min(0.98, 8 * room / coded)
        extract = render(self.structure, chosen)
        return {
            "facts_kept": sum(kept_facts(extract, self.item.facts)),
            "room_bytes": room,
            "units": len(chosen),
            "extract": extract,
        }
