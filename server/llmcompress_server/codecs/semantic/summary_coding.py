"""SEMANTIC bodies coded with the LOSSLESS coder: the summary and facts as one model-coded text.

The coder compresses the summary 3-5x on these passages where brotli gets
~2x, so at the same envelope size the summary keeps about twice the text. The
text is coded in pieces (an extract's units, a summary's words, a fact line),
each tokenized on its own, so every piece boundary is a token boundary: one
coding pass then gives the exact coded stream of every prefix of whole pieces
(`code_prefixes`), and the fit takes the longest that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
import numpy.typing as npt

from llmcompress_proto.v1 import compression_pb2 as pb

from ...coding.rows import StopCoding
from ...coding.tokens import Tokenized, Unrepresentable
from ...core.errors import DataLoss
from ..lossless import LosslessCodec
from .entities import Entity

# Starts the facts after the summary; a control byte, so no summary contains it.
FACTS_MARK = "\n\x1e"


def coded_text(summary: str, facts: list[Entity]) -> str | None:
    """The text the coder stores, or None when these parts cannot be laid out unambiguously."""
    if "\x1e" in summary or any(
        "\n" in f.text or "\x1e" in f.text or "\t" in f.kind or "\n" in f.kind or not f.kind
        for f in facts
    ):
        return None
    if not facts:
        return summary
    return summary + FACTS_MARK + "\n".join(f"{f.kind}\t{f.text}" for f in facts)


def fact_pieces(facts: list[Entity]) -> list[str]:
    """`coded_text`'s facts section cut at its lines (the first carries the mark)."""
    return [(FACTS_MARK if i == 0 else "\n") + f"{f.kind}\t{f.text}" for i, f in enumerate(facts)]


def parse_coded_text(text: str) -> pb.SemanticBody:
    summary, mark, rest = text.partition(FACTS_MARK)
    body = pb.SemanticBody(summary=summary)
    if mark:
        for line in rest.split("\n"):
            kind, tab, value = line.partition("\t")
            if not tab:
                raise DataLoss("the SEMANTIC envelope's coded facts are malformed: it is corrupted")
            body.facts.append(pb.Entity(kind=kind, text=value))
    return body


async def decode_text(coder: LosslessCodec, env: pb.Envelope, primer: Sequence[int] = ()) -> str:
    """The coded text of a SEMANTIC envelope (coded after `primer`, a dictionary's);
    PreconditionFailed when this server's model or engine differs from the one that coded
    it, DataLoss when it is corrupt."""
    await coder.engine.start()
    coder.check_model(env.model)
    coded = env.semantic.coded
    coder.check_fingerprint(coded.fingerprint)
    # The coded text is at most the summary plus the facts, both bounded by
    # the original; the slack covers the layout's separators.
    bound = 2 * env.original_length + 1024
    tokens = await coder.decode_tokens(coded, bound, primer)
    data = await coder.detokenize(tokens)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataLoss(
            "the SEMANTIC envelope's coded summary is not UTF-8: it is corrupted"
        ) from None


@dataclass(frozen=True)
class Prefix:
    """The coded stream of the text's first `pieces` pieces (`tokens` tokens)."""

    pieces: int
    tokens: int
    stream: bytes


class PrefixEncoder:
    """Range-codes a known token sequence (the coder side of one stream), keeping the coded
    stream at each of `boundaries` (token counts): a prefix of one coding pass codes exactly
    like that prefix alone, so each is a complete stream for its tokens. Stops the job once
    the stream passes `limit` bytes."""

    _FAMILY = constriction.stream.model.Categorical(perfect=False)

    def __init__(self, tokens: Sequence[int], boundaries: Sequence[int], limit: int) -> None:
        self.tokens = tokens
        self.boundaries = set(boundaries)
        self.limit = limit
        self.streams: dict[int, bytes] = {0: b""}
        self._i = 0
        self._encoder = constriction.stream.queue.RangeEncoder()
        self._symbol = np.empty(1, dtype=np.int32)

    def code(self, weights: npt.NDArray[Any]) -> int:
        token = self.tokens[self._i]
        self._symbol[0] = token
        self._encoder.encode(self._symbol, self._FAMILY, weights.reshape(1, -1))
        self._i += 1
        if self._i in self.boundaries:
            words: npt.NDArray[np.uint32] = self._encoder.get_compressed()
            self.streams[self._i] = words.astype("<u4", copy=False).tobytes()
            if 4 * len(words) > self.limit:
                raise StopCoding
        return token


async def _tokenize_pieces(coder: LosslessCodec, pieces: Sequence[str]) -> list[Tokenized] | None:
    out = []
    for piece in pieces:
        try:
            out.append(await coder.tokenize(piece.encode("utf-8")))
        except Unrepresentable:
            return None
    return out


@dataclass(frozen=True)
class CodedPrefixes:
    """One coding pass over a text's pieces: its tokens, the coded stream of every prefix
    of whole pieces, and the fingerprint they decode with."""

    tokens: list[int]
    prefixes: list[Prefix]
    fingerprint: pb.EngineFingerprint
    # Per piece, bytes carried by non-canonical tokens (see `tokens.ExactTokenizer`).
    piecewise: list[int]


async def code_prefixes(
    coder: LosslessCodec, pieces: Sequence[str], limit: int, primer: Sequence[int] = ()
) -> CodedPrefixes | None:
    """One token-by-token coding pass over `pieces`, each tokenized on its own, keeping the
    coded stream of every prefix of whole pieces up to the first past `limit` bytes.
    None when a piece does not round-trip through the tokenizer, or the text is longer than
    one context (n_ctx): the caller packs with brotli, or codes it whole."""
    split = await _tokenize_pieces(coder, pieces)
    if split is None:
        return None
    tokens = [t for part in split for t in part.tokens]
    if len(tokens) + len(primer) > coder.n_ctx:
        return None
    ends = list(np.cumsum([len(part.tokens) for part in split]))
    encoder = PrefixEncoder(tokens, ends, limit)
    fingerprint = await coder.code_stream(encoder, len(tokens), primer)
    prefixes = [Prefix(0, 0, b"")]
    prefixes += [
        Prefix(k + 1, int(end), encoder.streams[int(end)])
        for k, end in enumerate(ends)
        if int(end) in encoder.streams and end > 0
    ]
    return CodedPrefixes(tokens, prefixes, fingerprint, [p.piecewise_bytes for p in split])


async def decodes_to(
    coder: LosslessCodec, body: pb.LosslessBody, tokens: Sequence[int], primer: Sequence[int] = ()
) -> bool:
    """Decode a coded stream: True only when it gives exactly `tokens` back (verify)."""
    if not tokens:
        return not body.stream
    try:
        back = await coder.decode_tokens(body, len(tokens), primer)
    except DataLoss:
        return False
    return back == list(tokens)
