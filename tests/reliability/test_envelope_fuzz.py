"""Fuzz the envelope decoder: `Pipeline.reconstruct` = `open_envelope` + the ZSTD decode + checksum.

Inputs are raw bytes, structured mutations of real envelopes (truncate, flip,
splice, edit a header field, swap a body) and envelopes built field by field.
The only outcomes allowed are an exact text or InvalidInput / DataLoss /
PreconditionFailed: any other exception, or a call over 5 s, fails.
`make test` runs FUZZ_EXAMPLES (3,000 by default); `make fuzz` runs 100,000.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.envelope import FORMAT_VERSION, MAGIC, text_hash

from .envelope_property import FRAMES, MAX_TEXT, PIPELINE, SEEDS, check

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3000"))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private loop: hypothesis drives sync tests, and each example runs one call on it."""
    own = asyncio.new_event_loop()
    yield own
    own.run_until_complete(own.shutdown_default_executor())
    own.close()


# -- strategies -------------------------------------------------------------------------

_u64 = st.integers(0, 2**64 - 1)
_u32 = st.integers(0, 2**32 - 1)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real envelope with 1-4 byte-level or field-level edits."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["truncate", "flip", "set", "insert", "delete", "splice", "field"])
        )
        n = len(data)
        if op == "truncate":
            data = data[: draw(st.integers(0, n))]
        elif op == "flip" and n:
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[: draw(st.integers(0, n))] + other[draw(st.integers(0, len(other))) :]
        elif op == "field":
            data = bytearray(draw(_edit_field(bytes(data))))
    return bytes(data)


@st.composite
def _edit_field(draw: st.DrawFn, data: bytes) -> bytes:
    env = pb.Envelope()
    try:
        env.ParseFromString(data)
    except Exception:
        return data  # not parseable any more: byte edits only
    name = draw(st.sampled_from(["magic", "version", "mode", "length", "hash", "body", "model"]))
    if name == "magic":
        env.magic = draw(st.one_of(st.just(MAGIC ^ 1), _u32))
    elif name == "version":
        env.version = draw(st.integers(0, FORMAT_VERSION + 2) | _u32)
    elif name == "mode":
        env.mode = draw(st.integers(-2, 8))  # type: ignore[assignment]
    elif name == "length":
        env.original_length = draw(
            st.integers(0, MAX_TEXT + 2) | st.just(env.original_length + 1) | _u64
        )
    elif name == "hash":
        env.original_hash = draw(_u64)
    elif name == "body":
        body = draw(st.sampled_from(["zstd", "lossless", "semantic", "frame", "none"]))
        if body == "zstd":
            env.zstd.frame = draw(st.sampled_from(FRAMES) | st.binary(max_size=64))
        elif body == "lossless":
            env.lossless.stream = draw(st.binary(max_size=64))
        elif body == "semantic":
            env.semantic.summary = draw(st.text(max_size=32))
        elif body == "frame":
            env.zstd.frame = zstandard.ZstdCompressor().compress(draw(st.binary(max_size=256)))
        else:
            env.ClearField(env.WhichOneof("body") or "zstd")
    else:
        env.model.name = draw(st.text(max_size=16))
        env.model.sha256_prefix = draw(_u64)
    return env.SerializeToString()


@st.composite
def built(draw: st.DrawFn) -> bytes:
    """An envelope made field by field; the checksum right about half the time."""
    payload = draw(st.binary(max_size=512))
    right = draw(st.booleans())
    env = pb.Envelope(
        magic=draw(st.just(MAGIC) | _u32),
        version=draw(st.integers(0, FORMAT_VERSION + 1)),
        mode=draw(st.sampled_from([pb.MODE_ZSTD, pb.MODE_ZSTD, pb.MODE_LOSSLESS, 0, 9])),
        original_length=len(payload) if right else draw(st.integers(0, 2 * MAX_TEXT) | _u64),
        original_hash=text_hash(payload) if right else draw(_u64),
    )
    level = draw(st.integers(1, 5))
    frame = zstandard.ZstdCompressor(
        level=level, write_content_size=draw(st.booleans()), write_checksum=draw(st.booleans())
    ).compress(payload)
    env.zstd.frame = draw(st.just(frame) | st.binary(max_size=64))
    return env.SerializeToString()


INPUTS = st.one_of(st.binary(max_size=512), mutated(), built())


@pytest.mark.timeout(1800)
@settings(
    max_examples=EXAMPLES,
    deadline=None,  # a hang is caught by check()'s wait_for and pytest-timeout
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(INPUTS)
def test_envelope_decoder_fuzz(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    check(loop, data)


def test_seeds_round_trip(loop: asyncio.AbstractEventLoop) -> None:
    # The fuzzer starts from envelopes that decode; otherwise mutations prove little.
    for seed in SEEDS:
        assert loop.run_until_complete(PIPELINE.reconstruct(seed)).exact
