"""The mixing row model (id 1): the model's row mixed with what the stream itself repeats.

Per row, in order (research and figures: issue 21; parameters chosen on a dev split):
1. bias head: q = probs * m, with m a per-token multiplier learned online (m *= 1 - lr*p,
   then m[token] *= e^lr): this text's token frequencies against the model's.
2. line-break SSE: P(next token starts with CR/LF), re-estimated by an integer adaptive
   probability map indexed by the column (bytes since the last newline); the rest rescaled.
3. a linear mix, weights learned online by EM, of that distribution with a match model
   (the successor of the last earlier occurrence of the last 4 tokens) and token n-gram
   counts of orders 0-4 over the stream so far.
Deterministic by construction: elementwise numpy ops, an integer sum, max, fancy indexing
over small sparse sets, and scalar IEEE arithmetic in a fixed Python order; no float
reduction over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# The parameters of row model 1: any change of behaviour takes a new id (rows.ROW_MODELS).
BIAS_LR = 0.08
BIAS_GROW = 1.0832870676749586  # e^BIAS_LR, written out so no libm decides it
MIX_LR = 0.01
PRIOR = 2.0  # n-gram counts: pseudo-count of the mixed distribution
MATCH_MIN = 4  # tokens of context that make a match
ORDERS = (1, 2, 3, 4)  # n-gram orders beside the unigram (order 0)
COLUMN_SHIFT = 2  # SSE contexts are columns in steps of 4 bytes ...
COLUMN_CONTEXTS = 21  # ... the last one for column 80 and beyond
APM_RATE = 7
# Largest integer a scaled row element reaches: the sum of 49k of them stays far below 2**63.
_SCALE_TOP = float(1 << 40)

# -- integer logistic helpers (PAQ style, 12-bit probabilities) ------------------------------
_SQUASH_TABLE = (
    1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047,
    2549, 2994, 3348, 3607, 3785, 3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089,
    4092, 4093, 4094,
)  # fmt: skip


def squash(d: int) -> int:
    """4096 / (1 + e^(-d/256)) for d in [-2047, 2047], interpolated in a fixed table."""
    if d > 2047:
        return 4095
    if d < -2047:
        return 1
    w = d & 127
    i = (d >> 7) + 16
    return (_SQUASH_TABLE[i] * (128 - w) + _SQUASH_TABLE[i + 1] * w + 64) >> 7


def _stretch_table() -> list[int]:
    """The inverse of `squash` on 0..4095."""
    out = [2047] * 4096
    j = 0
    for x in range(-2047, 2048):
        v = squash(x)
        while j <= v:
            out[j] = x
            j += 1
    return out


_STRETCH = _stretch_table()


class _APM:
    """Adaptive probability map: refines a 12-bit probability in one of `n` contexts
    (integer table of 33 interpolation points per context, 16-bit entries)."""

    def __init__(self, n: int) -> None:
        self.t = [squash((j - 16) * 128) * 16 for _ in range(n) for j in range(33)]
        self.at = 0
        self.frac = 0

    def p(self, pr: int, cx: int) -> int:
        s = _STRETCH[pr] + 2048
        self.frac = s & 127
        self.at = (s >> 7) + cx * 33
        return (self.t[self.at] * (128 - self.frac) + self.t[self.at + 1] * self.frac) >> 11

    def update(self, y: int) -> None:
        target = (y << 16) + (y << APM_RATE) - y - y
        i = self.at + (self.frac >> 6)
        self.t[i] += (target - self.t[i]) >> APM_RATE


@dataclass(frozen=True)
class Vocabulary:
    """What the mixer needs to know of the model's tokens, from their byte pieces."""

    n_vocab: int
    line_breaks: npt.NDArray[np.int64]  # tokens whose piece starts with CR or LF
    line_break_set: frozenset[int]
    # Bytes after the piece's last LF (-1: none), and the piece's length: the column.
    newline_tail: tuple[int, ...]
    length: tuple[int, ...]

    @classmethod
    def of(cls, pieces: Sequence[bytes]) -> Vocabulary:
        breaks = [t for t, p in enumerate(pieces) if p[:1] in (b"\r", b"\n")]
        return cls(
            n_vocab=len(pieces),
            line_breaks=np.array(breaks, dtype=np.int64),
            line_break_set=frozenset(breaks),
            newline_tail=tuple(len(p) - p.rfind(b"\n") - 1 if b"\n" in p else -1 for p in pieces),
            length=tuple(len(p) for p in pieces),
        )


# (counts of the n-gram's successors, their total) for one order; None: context unseen.
_Stats = tuple[dict[int, int], int] | None


class MixerV1:
    """Row model 1: bias head, line-break SSE, and an EM mix with match and n-gram models.

    One instance per stream; its state is only ever the rows and tokens it was given."""

    def __init__(self, vocab: Vocabulary) -> None:
        n = vocab.n_vocab
        self.vocab = vocab
        self.m = np.ones(n, np.float32)
        self.q = np.empty(n, np.float32)
        self.tmp = np.empty(n, np.float32)
        self.out = np.empty(n, np.float32)
        self.column = 0
        self.apm = _APM(COLUMN_CONTEXTS)
        # Mixture weights: model, match, unigram, then ORDERS.
        c = 3 + len(ORDERS)
        self.w = [0.95] + [0.05 / (c - 1)] * (c - 1)
        self.history: list[int] = []
        self.seen_at: dict[tuple[int, ...], int] = {}  # last MATCH_MIN tokens -> end
        self.match = -1  # index in history of the predicted token, -1: no match
        self.uni = np.zeros(n, np.float32)
        self.n_uni = 0
        self.tables: list[dict[tuple[int, ...], dict[int, int]]] = [{} for _ in ORDERS]
        self._z = 1.0
        self._f_lb = self._f_other = 1.0
        self._stats: list[_Stats] = []
        self._predicted = -1

    def distribution(self, probs: npt.NDArray[np.float32]) -> npt.NDArray[np.floating[Any]]:
        q, tmp, out, vocab = self.q, self.tmp, self.out, self.vocab
        np.multiply(probs, self.m, out=q)
        # The normalizer as an integer sum of q scaled to at most 2**40 (exact in any order).
        scale = _SCALE_TOP / float(q.max())
        np.multiply(q, np.float32(scale), out=tmp)
        qi = tmp.astype(np.int64)
        zi = max(int(qi.sum()), 1)
        z = zi / scale
        lbi = int(qi[vocab.line_breaks].sum())
        # Line-break SSE, mixed 1:3 with its input.
        p_in = min(max((lbi * 4096) // zi, 1), 4095)
        p_apm = self.apm.p(p_in, min(self.column >> COLUMN_SHIFT, COLUMN_CONTEXTS - 1))
        p_lb = min(max((p_in + 3 * p_apm) >> 2, 1), 4095) / 4096.0
        plb = lbi / zi
        f_lb = p_lb / plb if plb > 0 else 1.0
        f_other = (1.0 - p_lb) / (1.0 - plb) if plb < 1 else 1.0
        # The mix: what a model cannot say (no match, unseen context) goes to the model's row.
        w, h = self.w, self.history
        llm = w[0]
        stats: list[_Stats] = []
        for j, order in enumerate(ORDERS):
            d = self.tables[j].get(tuple(h[-order:])) if len(h) >= order else None
            if d:
                total = sum(d.values())
                stats.append((d, total))
                llm += w[3 + j] * PRIOR / (total + PRIOR)
            else:
                stats.append(None)
                llm += w[3 + j]
        predicted = h[self.match] if self.match >= 0 else -1
        if predicted < 0:
            llm += w[1]
        llm += w[2] * PRIOR / (self.n_uni + PRIOR)
        np.multiply(q, np.float32(llm * f_other / z), out=out)
        out[vocab.line_breaks] *= np.float32(f_lb / f_other)
        if self.n_uni:
            np.multiply(self.uni, np.float32(w[2] / (self.n_uni + PRIOR)), out=tmp)
            out += tmp
        for j, st in enumerate(stats):
            if st is not None:
                d, total = st
                ids = np.fromiter(d.keys(), np.int64, len(d))
                counts = np.fromiter(d.values(), np.float32, len(d))
                out[ids] += counts * np.float32(w[3 + j] / (total + PRIOR))
        if predicted >= 0:
            out[predicted] += np.float32(w[1])
        self._z, self._f_lb, self._f_other = z, f_lb, f_other
        self._stats, self._predicted = stats, predicted
        return out

    def update(self, token: int) -> None:
        vocab = self.vocab
        is_lb = token in vocab.line_break_set
        # Each component's probability of the token (scalars, fixed order).
        p = float(self.q[token]) / self._z * (self._f_lb if is_lb else self._f_other)
        c = [p, (1.0 if self._predicted == token else 0.0) if self._predicted >= 0 else p]
        c.append((float(self.uni[token]) + PRIOR * p) / (self.n_uni + PRIOR))
        for st in self._stats:
            if st is None:
                c.append(p)
            else:
                d, total = st
                c.append((d.get(token, 0) + PRIOR * p) / (total + PRIOR))
        mixed = 0.0
        for wi, ci in zip(self.w, c, strict=True):
            mixed += wi * ci
        self.w = [
            (1 - MIX_LR) * wi + MIX_LR * wi * ci / mixed for wi, ci in zip(self.w, c, strict=True)
        ]
        self.apm.update(1 if is_lb else 0)
        # Bias head: m *= 1 - lr * p (p = q / z), then m[token] *= e^lr.
        np.multiply(self.q, np.float32(BIAS_LR / self._z), out=self.tmp)
        self.tmp *= self.m
        self.m -= self.tmp
        self.m[token] *= np.float32(BIAS_GROW)
        # The text models.
        h = self.history
        for j, order in enumerate(ORDERS):
            if len(h) >= order:
                d = self.tables[j].setdefault(tuple(h[-order:]), {})
                d[token] = d.get(token, 0) + 1
        self.uni[token] += 1
        self.n_uni += 1
        self.match = self.match + 1 if self._predicted == token else -1
        h.append(token)
        if len(h) >= MATCH_MIN:
            key = tuple(h[-MATCH_MIN:])
            if self.match < 0:
                self.match = self.seen_at.get(key, -1)
            self.seen_at[key] = len(h)
        tail = vocab.newline_tail[token]
        self.column = tail if tail >= 0 else self.column + vocab.length[token]


def mixer_v1(pieces: Sequence[bytes]) -> Callable[[], MixerV1]:
    """Row model 1's per-stream factory for a vocabulary of these token pieces."""
    vocab = Vocabulary.of(pieces)
    return lambda: MixerV1(vocab)
