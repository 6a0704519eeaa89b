"""SEMANTIC's extractive summary: the original's most representative sentences, verbatim,
chosen to fit a byte budget and kept in their original order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .embedder import MiniLMEmbedder

# A sentence ends at . ! ? (plus closing quotes/brackets) followed by space; a
# few abbreviations and initials ("Dr.", "J.") do not end one.
_END = re.compile(r"(?<=[.!?])['\"\u2019\u201d)\]]*[ \t]+")
_ABBREV = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|vs|etc|e\.g|i\.e|cf|Inc|Ltd|Co|No|Vol|pp|Fig)|"
    r"(?<![\w])[A-Z])\.$"
)
# Hard-wrapped prose wraps near this many characters; a shorter line, or a
# line ending a sentence, or an indented next line (verse, lists, speeches)
# marks a real line break.
_WRAP = 50


@dataclass(frozen=True)
class Sentence:
    text: str  # verbatim, without surrounding whitespace
    # Whether a line break precedes it in the original (kept when joining).
    new_line: bool


def _lines_to_units(paragraph: str) -> list[str]:
    """Split a paragraph into units at its real line breaks, joining hard-wrapped lines."""
    lines = paragraph.split("\n")
    units: list[str] = []
    current = ""
    for line in lines:
        if not line.strip():
            continue
        if current and (
            line[:1] in " \t" or len(current.rsplit("\n", 1)[-1]) < _WRAP or current[-1] in ".!?:"
        ):
            units.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        units.append(current)
    return units


# Sentences longer than this are cut further at clause punctuation, so a short
# text's budget (a 1 KB text at 8x keeps ~130 bytes) can still hold a piece.
_LONG = 160
_CLAUSE = re.compile(r"(?<=[,;:])\s+")
_MIN_CLAUSE = 50


def _clauses(sentence: str) -> list[str]:
    if len(sentence) <= _LONG:
        return [sentence]
    pieces: list[str] = []
    start = 0
    for m in _CLAUSE.finditer(sentence):
        if m.start() - start >= _MIN_CLAUSE and len(sentence) - m.end() >= _MIN_CLAUSE:
            pieces.append(sentence[start : m.start()])
            start = m.end()
    pieces.append(sentence[start:])
    return pieces


def split_sentences(text: str) -> list[Sentence]:
    """The text's sentences (long ones cut into clauses), verbatim with their internal
    line wraps, in order."""
    out: list[Sentence] = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        for u, unit in enumerate(_lines_to_units(paragraph)):
            start = 0
            first = True
            for m in _END.finditer(unit):
                piece = unit[start : m.start()]
                if _ABBREV.search(piece) or not piece.strip():
                    continue
                _add(out, piece.strip(), first and (bool(out) or u > 0))
                first = False
                start = m.end()
            rest = unit[start:].strip()
            if rest:
                _add(out, rest, first and bool(out))
    return out


def _add(out: list[Sentence], sentence: str, new_line: bool) -> None:
    for i, clause in enumerate(_clauses(sentence)):
        out.append(Sentence(clause, new_line=new_line and i == 0))


def join_sentences(sentences: Sequence[Sentence]) -> str:
    parts: list[str] = []
    for s in sentences:
        if parts:
            parts.append("\n" if s.new_line else " ")
        parts.append(s.text)
    return "".join(parts)


Vector = npt.NDArray[np.float32]


def rank(vectors: Sequence[Vector], weights: Sequence[float], document: Vector) -> list[int]:
    """Sentence indices, most useful first.

    Greedy on the embedding of the extract, estimated as the weighted mean of its
    sentences' embeddings: each step adds the sentence that brings that mean
    closest (cosine) to the document's embedding. A redundant sentence moves the
    mean little, so this also favours coverage (what MMR does by hand).
    """
    order: list[int] = []
    total = np.zeros_like(document)
    left = list(range(len(vectors)))
    while left:
        best, best_cos = left[0], -2.0
        for i in left:
            v = total + weights[i] * vectors[i]
            n = float(np.linalg.norm(v))
            cos = float(v @ document) / n if n else 0.0
            if cos > best_cos:
                best, best_cos = i, cos
        order.append(best)
        left.remove(best)
        total = total + weights[best] * vectors[best]
    return order


def embed_sentences(
    embedder: MiniLMEmbedder, text: str, sentences: Sequence[Sentence]
) -> tuple[list[Vector], list[float], Vector]:
    """Sentence embeddings, their weights (word counts) and the document's embedding."""
    vectors = [embedder.embed_one(s.text) for s in sentences]
    weights = [float(len(s.text.split()) + 2) for s in sentences]
    return vectors, weights, embedder.embed_one(text)


@dataclass(frozen=True)
class Ranked:
    """A text's sentences and their order of usefulness: `pick` cuts extracts of any size."""

    sentences: list[Sentence]
    order: list[int]

    def kept(self, budget: int) -> list[int]:
        """Sentences in rank order while they fit `budget` UTF-8 bytes (one that does not
        fit is skipped, a shorter one after it may be kept), in original order."""
        kept: list[int] = []
        spent = 0
        for i in self.order:
            size = len(self.sentences[i].text.encode("utf-8")) + 1
            if spent + size <= budget:
                kept.append(i)
                spent += size
        return sorted(kept)

    def pick(self, budget: int) -> str:
        return join_sentences([self.sentences[i] for i in self.kept(budget)])


def rank_text(embedder: MiniLMEmbedder, text: str) -> Ranked:
    """Split and rank `text` (CPU-bound: a MiniLM pass per sentence)."""
    sentences = split_sentences(text)
    if not sentences:
        return Ranked([], [])
    vectors, weights, document = embed_sentences(embedder, text, sentences)
    return Ranked(sentences, rank(vectors, weights, document))
