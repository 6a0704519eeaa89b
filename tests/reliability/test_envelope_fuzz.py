"""Fuzz the envelope decoder: `Pipeline.reconstruct` = `open_envelope` + the ZSTD decode + checksum.

Inputs are raw bytes, structured mutations of real envelopes (truncate, flip,
splice, edit a header field, swap a body) and envelopes built field by field.
The only outcomes allowed are an exact text or a documented error
(envelope_property.check). `make test` runs FUZZ_EXAMPLES (3,000 by default);
`make fuzz` runs 100,000. The real LOSSLESS and SEMANTIC decoders: test_codec_fuzz.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings

from .envelope_property import MAX_TEXT, PIPELINE, SEEDS, check
from .strategies import envelopes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3000"))


@pytest.mark.timeout(1800)
@settings(
    max_examples=EXAMPLES,
    deadline=None,  # a hang is caught by check()'s wait_for and pytest-timeout
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(envelopes(SEEDS, MAX_TEXT))
def test_envelope_decoder_fuzz(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    check(loop, data)


def test_seeds_round_trip(loop: asyncio.AbstractEventLoop) -> None:
    # The fuzzer starts from envelopes that decode; otherwise mutations prove little.
    for seed in SEEDS:
        assert loop.run_until_complete(PIPELINE.reconstruct(seed)).exact
