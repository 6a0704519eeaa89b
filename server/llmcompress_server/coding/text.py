"""A text's tokens coded as streams on the engine, and decoded back: one engine job each."""

from __future__ import annotations

from collections.abc import Sequence

from .engine import CodingEngine, ContextKey, JobTiming, PrimerState, StreamWork
from .layout import Layout
from .rows import RowModelFactory, StreamDecoder, StreamEncoder, StreamEvaluator


def split(tokens: Sequence[int], lengths: Sequence[int]) -> list[Sequence[int]]:
    parts, at = [], 0
    for n in lengths:
        parts.append(tokens[at : at + n])
        at += n
    return parts


async def encode_tokens(
    engine: CodingEngine,
    key: ContextKey,
    layout: Layout,
    tokens: Sequence[int],
    row_models: RowModelFactory,
    n_streams: int,
    primer: PrimerState | None = None,
) -> tuple[list[bytes], JobTiming]:
    """`tokens` as `n_streams` coded streams (little-endian uint32 words each), every one
    starting from `primer`'s cells (None: from the start token alone)."""
    parts = split(tokens, layout.lengths(len(tokens), n_streams))
    encoders = [StreamEncoder(part) for part in parts]
    timing = await engine.run(
        [StreamWork(e, row_models(), len(p), primer) for e, p in zip(encoders, parts, strict=True)],
        key,
        layout.schedule,
    )
    return [e.finish() for e in encoders], timing


async def decode_tokens(
    engine: CodingEngine,
    key: ContextKey,
    layout: Layout,
    n_tokens: int,
    streams: Sequence[bytes],
    row_models: RowModelFactory,
    primer: PrimerState | None = None,
) -> tuple[list[int], JobTiming]:
    """The tokens of `streams` (coded after `primer`); DataLoss when a stream is damaged.
    The caller has checked that `len(streams)` is valid for `n_tokens` (`Layout.valid_count`)."""
    lengths = layout.lengths(n_tokens, len(streams))
    decoders = [StreamDecoder(s, n) for s, n in zip(streams, lengths, strict=True)]
    timing = await engine.run(
        [StreamWork(d, row_models(), d.n_tokens, primer) for d in decoders],
        key,
        layout.schedule,
    )
    return [t for d in decoders for t in d.finish()], timing


async def evaluate_tokens(
    engine: CodingEngine,
    key: ContextKey,
    layout: Layout,
    tokens: Sequence[int],
    row_models: RowModelFactory,
    n_streams: int,
    primer: PrimerState | None = None,
) -> JobTiming:
    """The schedule with no coding: the engine's raw speed on `tokens`."""
    parts = split(tokens, layout.lengths(len(tokens), n_streams))
    return await engine.run(
        [StreamWork(StreamEvaluator(p), row_models(), len(p), primer) for p in parts],
        key,
        layout.schedule,
    )
