"""One stream's row stage: the RowModel seat between the model's row and the range coder,
the identity row model, and the per-stream range coders (constriction)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import constriction
import numpy as np
import numpy.typing as npt

from ..errors import DataLoss, PreconditionFailed

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

# Row models by the id envelopes store (EngineFingerprint): only ever add; a
# change of behaviour takes a new id, and old ids keep decoding.
ROW_MODELS: dict[int, RowModelFactory] = {IDENTITY: IdentityRowModel}


def row_model_factory(model_id: int) -> RowModelFactory:
    try:
        return ROW_MODELS[model_id]
    except KeyError:
        raise PreconditionFailed(
            f"row model: the envelope was coded with row model {model_id}, which this server "
            f"does not have (it knows {sorted(ROW_MODELS)}); reconstruct it on a newer server"
        ) from None


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
    """Decodes `n_tokens` tokens from one coded stream; DataLoss when it is damaged."""

    def __init__(self, stream: bytes, n_tokens: int) -> None:
        self.n_tokens = n_tokens
        self.tokens: list[int] = []
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
        self.tokens.append(token)
        return token

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
