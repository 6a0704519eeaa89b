"""One stream's row stage: the RowModel seat between the model's row and the range coder,
the identity row model, and the per-stream range coders (constriction)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import constriction
import numpy as np
import numpy.typing as npt

from ..core.errors import DataLoss, PreconditionFailed
from .mixer import mixer_v1

Probs = npt.NDArray[np.float32]
Weights = npt.NDArray[np.floating[Any]]


class RowModel(Protocol):
    """One stream's probability stage between the model's row and the range coder.

    `distribution` gets `exp(logits - max)` as a read-only float32 view, valid
    only during the call, and returns nonnegative finite weights (float32 or
    float64, any scale) for the coder. Bit-identical on both sides: no float
    reductions over the vocabulary whose result depends on SIMD path or threads.
    """

    def distribution(self, probs: Probs) -> Weights: ...

    def update(self, token: int) -> None: ...


# A fresh RowModel per stream; never shared between streams or jobs.
RowModelFactory = Callable[[], RowModel]


class IdentityRowModel:
    """The model's probabilities unchanged: exactly the coding of schedule t1."""

    def distribution(self, probs: Probs) -> Weights:
        return probs

    def update(self, token: int) -> None:
        pass


IDENTITY = 0
MIXER_V1 = 1  # coding/mixer.py, parameters as named there

# A row model's per-stream factory, built once from the vocabulary's token pieces.
RowModelSpec = Callable[[Sequence[bytes]], RowModelFactory]


def _identity(pieces: Sequence[bytes]) -> RowModelFactory:
    return IdentityRowModel


# Row models by the id envelopes store (EngineFingerprint): only ever add; a
# change of behaviour takes a new id, and old ids keep decoding. The names
# configuration takes are config.ROW_MODEL_IDS.
ROW_MODELS: dict[int, RowModelSpec] = {IDENTITY: _identity, MIXER_V1: mixer_v1}


def row_model_spec(model_id: int) -> RowModelSpec:
    try:
        return ROW_MODELS[model_id]
    except KeyError:
        raise PreconditionFailed(
            f"row model: the envelope was coded with row model {model_id}, which this server "
            f"does not have (it knows {sorted(ROW_MODELS)}); reconstruct it on a newer server"
        ) from None


class StopCoding(Exception):
    """Raised by a coder that has all it needs: its job ends there (the caller catches it)."""


class Coder(Protocol):
    """Codes one stream, token by token: the encoder codes its next known token, the
    decoder decodes one; both return it."""

    def code(self, weights: Weights) -> int: ...


# constriction's fast categorical: quantizes any nonnegative weights, no
# normalisation needed (perfect=False), as schedule t1 does.
_FAMILY = constriction.stream.model.Categorical(perfect=False)


class StreamEncoder:
    """Range-codes a known token sequence."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = tokens
        self._i = 0
        self._encoder = constriction.stream.queue.RangeEncoder()
        self._symbol = np.empty(1, dtype=np.int32)

    def code(self, weights: Weights) -> int:
        token = self.tokens[self._i]
        self._symbol[0] = token
        self._encoder.encode(self._symbol, _FAMILY, weights.reshape(1, -1))
        self._i += 1
        return token

    def finish(self) -> bytes:
        words: npt.NDArray[np.uint32] = self._encoder.get_compressed()
        return words.astype("<u4", copy=False).tobytes()


class StreamDecoder:
    """Decodes `n_tokens` tokens from one coded stream; DataLoss when it is damaged.

    A range-coded stream of B bits carries about B bits of information: the tokens
    decoded from it cost -log2 p each, and their sum cannot pass B + 64 (the coder's
    state). Decoding garbage, or decoding on past a stream's end (the decoder reads zeros
    there), keeps producing tokens at several bits each, up to the claimed token count:
    hours of model work for a forged 4 MiB claim. So the decoder stops once the tokens
    cost more than twice that plus 256 bits, which covers the gap between these float
    weights and the coder's quantized ones with room to spare (a real 300-byte passage
    spends 400 of its 1,216 bits) and stops garbage within about twice the work of a real
    stream of the same size.
    """

    def __init__(self, stream: bytes, n_tokens: int) -> None:
        self.n_tokens = n_tokens
        self.tokens: list[int] = []
        self._bits_left = 2 * (8 * len(stream) + 64) + 256.0
        try:
            words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
            self._decoder = constriction.stream.queue.RangeDecoder(words)
        except Exception as exc:  # constriction reports bad input as plain exceptions
            raise DataLoss(f"the LOSSLESS coded stream is unreadable ({exc})") from None

    def code(self, weights: Weights) -> int:
        try:
            token = int(self._decoder.decode(_FAMILY, weights.reshape(1, -1))[0])
        except Exception as exc:
            raise DataLoss(
                f"the LOSSLESS coded stream is corrupt at token {len(self.tokens)} ({exc})"
            ) from None
        self._spend(weights, token)
        self.tokens.append(token)
        return token

    def _spend(self, weights: Weights, token: int) -> None:
        # Only a bound with 2x slack: a float sum's last bits cannot move a real stream
        # across it, so it need not be bit-identical between machines.
        total = float(weights.sum())
        p = float(weights[token]) / total if total > 0 else 0.0
        # The coder gives every token at least 2**-24, so no token costs more than 24 bits.
        self._bits_left -= min(-math.log2(p), 24.0) if p > 0 else 24.0
        if self._bits_left < 0:
            raise DataLoss(
                f"the LOSSLESS coded stream is corrupt: token {len(self.tokens)} decodes past "
                "the information its bytes can hold; restore the envelope from a good copy"
            )

    def finish(self) -> list[int]:
        if not self._decoder.maybe_exhausted():
            raise DataLoss(
                "the LOSSLESS coded stream does not end where its tokens do: it is truncated "
                "or corrupted; restore the envelope from a good copy"
            )
        return self.tokens


class StreamEvaluator:
    """Feeds a known token sequence without coding: the engine's raw speed."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = tokens
        self._i = 0

    def code(self, weights: Weights) -> int:
        token = self.tokens[self._i]
        self._i += 1
        return token


class StreamCodeLength:
    """Feeds a known token sequence without coding, adding up its ideal code length in bits
    (-log2 of each token's probability under the row's weights): what choosing a primer
    compares. A float64 sum, for measuring only: nothing decodes by it."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = tokens
        self.bits = 0.0
        self._i = 0

    def code(self, weights: Weights) -> int:
        token = self.tokens[self._i]
        total = float(weights.sum(dtype=np.float64))
        p = float(weights[token]) / total if total > 0 else 0.0
        self.bits += -math.log2(p) if p > 0 else 64.0
        self._i += 1
        return token
