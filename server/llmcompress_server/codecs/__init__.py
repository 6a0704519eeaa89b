"""Codecs turn text into an envelope body and back; one module (or room) per mode.

A codec stores what it was asked for or raises `CannotEncode` (`BelowQuality`
when it made a result below the quality bar); the pipeline decides what to
store instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.dictionary import Dictionary
from ..core.envelope import ModelIdentity
from ..core.errors import CannotEncode
from ..telemetry.stages import StageClock

if TYPE_CHECKING:
    from .semantic.grouping import Membership


@dataclass(frozen=True)
class CompressOptions:
    """Per-request knobs, after server defaults are applied."""

    verify: bool = True
    target_ratio: float = 10.0
    quality: pb.Quality.ValueType = pb.QUALITY_UNSPECIFIED
    evaluate_quality: bool = False
    # BatchCompress near-duplicates: the group whose summary SEMANTIC shares (never in
    # cache keys: a member's envelope is a complete envelope of its own text).
    group: Membership | None = None
    # The corpus dictionary the request named (resolved by the pipeline); None: none.
    dictionary: Dictionary | None = None


@dataclass
class Encoded:
    """A codec's output: an Envelope with `mode` and its body set (header not yet sealed)."""

    envelope: pb.Envelope
    model: ModelIdentity | None = None
    backend: str = ""
    # Set by the pipeline when it stored something other than what was asked.
    degraded: bool = False
    reason: str = ""
    quality: pb.QualityScores | None = None
    # Model fallbacks the backend took on the way (ChatResult.fallbacks), in order.
    fallbacks: list[str] = field(default_factory=list)
    # Bytes of the model-coded text carried by tokens the tokenizer would not have
    # produced there (`coding/tokens.py`: `ExactTokenizer`); 0 when nothing was model-coded.
    piecewise_bytes: int = 0
    # The corpus dictionary the body was coded with, when the codec used the one asked for.
    dictionary: Dictionary | None = None


@dataclass
class Decoded:
    """What decode gives back: the text, and whether it is exact."""

    text: str
    # True only for modes that promise the original byte for byte; the
    # pipeline then checks the stored length and hash.
    exact: bool
    model: str = ""
    quality: pb.QualityScores | None = None


class BelowQuality(CannotEncode):
    """A lossy result scored below `model.quality_threshold`: `best` is the best one made,
    which the pipeline keeps (marked degraded) only when no fallback is configured."""

    def __init__(self, reason: str, best: Encoded) -> None:
        super().__init__(reason)
        self.best = best


class TooShort(CannotEncode):
    """The text is too short for the asked ratio: what is left after the envelope header
    cannot hold one sentence of it. Nothing failed: the pipeline stores the text exactly
    (LOSSLESS where the engine is, else ZSTD) and says why, not marked degraded."""


class Codec(Protocol):
    """One mode: `encode` makes an envelope body (or raises `CannotEncode`), `decode` reads
    one back. Everything decode needs is in the envelope, and the corpus dictionary it
    names (resolved by the pipeline; None when it names none)."""

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded: ...

    async def decode(
        self, env: pb.Envelope, clock: StageClock, dictionary: Dictionary | None = None
    ) -> Decoded: ...


# Texts up to this size may be coded by `InlineCodec.frame_now` in the caller's thread:
# microseconds of work, less than a hop to a worker thread or a task.
INLINE_BYTES = 32 * 1024


@runtime_checkable
class InlineCodec(Protocol):
    """A codec cheap enough to answer a short text at once, with no await (ZSTD): the
    compact ZSTD envelope's frame, and the dictionary it used (`envelope.seal_zstd`).
    The frame depends on the text and the dictionary alone, never on other options, so
    its cache key's recipe is one per dictionary."""

    def frame_now(
        self, data: bytes, dictionary: Dictionary | None = None
    ) -> tuple[bytes, Dictionary | None]: ...
