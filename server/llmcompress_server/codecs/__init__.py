"""Codecs turn text into an envelope body and back; one module per mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmcompress.v1 import compression_pb2 as pb

from ..envelope import ModelIdentity
from ..stages import StageClock


@dataclass(frozen=True)
class CompressOptions:
    """Per-request knobs, after server defaults are applied."""

    verify: bool = True
    target_ratio: float = 10.0
    quality: pb.Quality.ValueType = pb.QUALITY_UNSPECIFIED
    evaluate_quality: bool = False


@dataclass
class Encoded:
    """A codec's output: an Envelope with `mode` and its body set (header not yet sealed)."""

    envelope: pb.Envelope
    model: ModelIdentity | None = None
    backend: str = ""
    # Set when the codec had to store something other than what was asked.
    degraded: bool = False
    reason: str = ""
    quality: pb.QualityScores | None = None


@dataclass
class Decoded:
    text: str
    # True only for modes that promise the original byte for byte; the
    # pipeline then checks the stored length and hash.
    exact: bool
    model: str = ""
    quality: pb.QualityScores | None = None


class Codec(Protocol):
    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded: ...

    async def decode(self, env: pb.Envelope, clock: StageClock) -> Decoded: ...
