"""Exact tokenization: a token sequence whose detokenization is the text, byte for byte.

The decoder only detokenizes, so any token sequence that detokenizes to the
original bytes codes and decodes correctly, canonical or not. The tokenizer's
own output fails that check in two ways on SmolLM2: pieces longer than
llama-cpp-python's 32-byte detokenize buffer come back empty (47 tokens, such
as a newline plus 48 spaces, or 64 dashes), and bytes no token holds are
dropped. `ExactTokenizer` keeps the tokenizer's tokens wherever they
reproduce the bytes, tokenizes only the failing spans on their own, and halves
a span that still fails, down to single-byte tokens. A byte no token
reproduces at all (on SmolLM2: the control characters 0x04, 0x06, 0x13, 0x14,
0x16, 0x1D, and 0xF1, 0xF2, which lead the UTF-8 of planes 4-11) raises
`Unrepresentable`, or for LOSSLESS is escaped: coded as a stand-in byte, and put
back from a small table in the body (`LosslessBody.escapes`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import llama_cpp

from ..core.errors import CannotEncode, DataLoss

# Longer than any token piece of a byte-level BPE vocabulary (SmolLM2's longest: 81).
_PIECE_BUFFER = 1024


class Unrepresentable(CannotEncode):
    """The text holds a byte that no token of the model's vocabulary reproduces."""


@dataclass(frozen=True)
class Tokenized:
    tokens: list[int]
    # Bytes coded by tokens the tokenizer itself would not have produced there.
    piecewise_bytes: int
    # Bytes no token spells, with where they go (`escape`); the tokens hold stand-ins.
    escapes: bytes = b""


# Stand-ins for bytes the vocabulary cannot spell. 0xF1 and 0xF2 lead the UTF-8 of
# planes 4-11; 0xF3 leads planes 12-15 with the same continuation bytes, so the text
# keeps its UTF-8 shape and the tokenizer sees a character, not garbage. Other bytes
# (SmolLM2: six C0 controls) become 0x01, another control.
_STAND_INS = {0xF1: 0xF3, 0xF2: 0xF3}
_STAND_IN = 0x01


def escape(data: bytes, missing: frozenset[int]) -> tuple[bytes, bytes]:
    """`data` with each byte in `missing` replaced by a stand-in, and the escapes that put
    them back: per replaced byte, the gap since the previous one (a varint) and the byte."""
    if not missing.intersection(data):
        return data, b""
    out = bytearray(data)
    table = bytearray()
    last = -1
    for at, byte in enumerate(data):
        if byte in missing:
            out[at] = _STAND_INS.get(byte, _STAND_IN)
            table += _varint(at - last - 1) + bytes([byte])
            last = at
    return bytes(out), bytes(table)


def unescape(data: bytes, escapes: bytes) -> bytes:
    """Put back the bytes `escape` replaced; DataLoss when the escapes do not fit `data`."""
    if not escapes:
        return data
    out = bytearray(data)
    at, i = -1, 0
    while i < len(escapes):
        gap, i = _read_varint(escapes, i)
        at += gap + 1
        if i >= len(escapes) or at >= len(out):
            raise DataLoss("the LOSSLESS body's escaped bytes do not fit its text: it is corrupted")
        out[at] = escapes[i]
        i += 1
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while i < len(data) and shift < 64:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, i
        shift += 7
    raise DataLoss("the LOSSLESS body's escaped bytes are malformed: it is corrupted")


class ExactTokenizer:
    """Turns any bytes into tokens whose detokenization, as the decoder runs it, is exact.

    Built once per model from any of its `Llama` instances (it reads every token's
    piece: ~0.3 s for 49k tokens); `tokenize` then takes the calling worker's instance.
    """

    def __init__(self, llama: Any) -> None:
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        buf = (ctypes.c_char * _PIECE_BUFFER)()
        whole: list[bytes] = []
        usable: list[bytes] = []
        for t in range(llama.n_vocab()):
            n = llama_cpp.llama_token_to_piece(vocab, t, buf, _PIECE_BUFFER, 0, False)
            piece = buf.raw[: max(n, 0)]
            whole.append(piece)
            # The decoder's own detokenize is the test: a token is usable only where it
            # gives back its whole piece.
            usable.append(piece if llama.detokenize([t], special=False) == piece else b"")
        self._whole = whole
        self._piece = usable
        self._byte_token: dict[int, int] = {}
        for t, piece in enumerate(usable):
            if len(piece) == 1:
                self._byte_token.setdefault(piece[0], t)

    @property
    def pieces(self) -> list[bytes]:
        """Every token's byte piece, by id."""
        return self._whole

    @property
    def missing_bytes(self) -> frozenset[int]:
        """Byte values no token reproduces on its own."""
        return frozenset(range(256)) - self._byte_token.keys()

    def tokenize(self, llama: Any, data: bytes, *, escapes: bool = False) -> Tokenized:
        """Tokens that detokenize to `data`. A byte no token spells raises `Unrepresentable`,
        or with `escapes` is replaced by a stand-in and recorded (`escape`), so the tokens
        detokenize to the escaped text."""
        table = b""
        if escapes:
            data, table = escape(data, self.missing_bytes)
        canonical = _tokenize(llama, data)
        tokens = self._exact(llama, data, 0, len(data), canonical)
        # The decoder's own detokenize has the last word.
        if llama.detokenize(tokens, special=False) != data:
            raise CannotEncode(
                "exact tokenization did not reproduce the text (a bug; please report it)"
            )
        return Tokenized(tokens, self._piecewise_bytes(canonical, tokens), table)

    def _exact(
        self, llama: Any, data: bytes, lo: int, hi: int, tokens: list[int] | None = None
    ) -> list[int]:
        """Tokens for data[lo:hi]: the tokenizer's where they reproduce the bytes, else pieces."""
        if lo == hi:
            return []
        if tokens is None:
            tokens = _tokenize(llama, data[lo:hi])
        whole, piece = self._whole, self._piece
        kept: list[int] = []
        failing: list[tuple[int, int, int]] = []  # (position in kept, start, end)
        pos, i, n = lo, 0, len(tokens)
        # Forward while the tokens' pieces line up with the bytes; one that lines up
        # but does not decode to its piece is a failing span of its own.
        while i < n:
            t = tokens[i]
            w = whole[t]
            if not w or data[pos : pos + len(w)] != w or pos + len(w) > hi:
                break
            if piece[t]:
                kept.append(t)
            else:
                failing.append((len(kept), pos, pos + len(w)))
            pos += len(w)
            i += 1
        tail: list[int] = []
        end = hi
        if i < n or pos < hi:
            # Out of step (the tokenizer dropped or changed bytes): line up from the
            # end, and the stretch in between fails as a whole.
            j = n
            while j > i:
                p = piece[tokens[j - 1]]
                if not p or end - len(p) < pos or data[end - len(p) : end] != p:
                    break
                end -= len(p)
                j -= 1
                tail.append(tokens[j])
            tail.reverse()
            if pos < end:
                failing.append((len(kept), pos, end))
        if not failing:
            return kept + tail
        if len(failing) == 1 and failing[0][1:] == (lo, hi):
            return self._halves(llama, data, lo, hi)
        out: list[int] = []
        done = 0
        for at, start, stop in failing:
            out += kept[done:at]
            out += self._exact(llama, data, start, stop)
            done = at
        return out + kept[done:] + tail

    def _halves(self, llama: Any, data: bytes, lo: int, hi: int) -> list[int]:
        """The span fails when tokenized alone too: split it in two, at the character
        start nearest the middle when there is one."""
        if hi - lo == 1:
            token = self._byte_token.get(data[lo])
            if token is None:
                raise Unrepresentable(
                    f"byte 0x{data[lo]:02X} at offset {lo} has no token in the model's "
                    "vocabulary, so LOSSLESS cannot code this text"
                )
            return [token]
        middle = (lo + hi) // 2
        cut = middle
        for d in range(hi - lo):
            if lo < middle - d and data[middle - d] & 0xC0 != 0x80:
                cut = middle - d
                break
            if middle + d < hi and data[middle + d] & 0xC0 != 0x80:
                cut = middle + d
                break
        return self._exact(llama, data, lo, cut) + self._exact(llama, data, cut, hi)

    def _piecewise_bytes(self, canonical: list[int], tokens: list[int]) -> int:
        spans = set()
        pos = 0
        for t in canonical:
            end = pos + len(self._whole[t])
            spans.add((pos, end, t))
            pos = end
        count = pos = 0
        for t in tokens:
            end = pos + len(self._piece[t])
            if (pos, end, t) not in spans:
                count += end - pos
            pos = end
        return count


def _tokenize(llama: Any, data: bytes) -> list[int]:
    tokens: list[int] = llama.tokenize(data, add_bos=False, special=False)
    return tokens
