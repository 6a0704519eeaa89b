"""Fuzz every decoder with the real model: LOSSLESS streams, SEMANTIC bodies (coded by the
model, brotli-packed, plain; extractive and abstractive) and ZSTD, in one pipeline.

The property is envelope_property.check: an exact text that matches the header, a
lossy SEMANTIC text, or a documented error; never INTERNAL, never a wrong text marked
exact. `make test` runs FUZZ_MODEL_EXAMPLES (200 by default: an input can cost
seconds of model work); `make fuzz` runs more, and atheris over the same pipeline.
A forged stream's model work is bounded by its size, and a forged summary too long for
the embedded model's context is refused with FAILED_PRECONDITION: the last tests.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.codecs.semantic import SemanticCodec
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.envelope import seal
from llmcompress_server.core.errors import ContextExceeded, DataLoss
from llmcompress_server.flow.pipeline import Pipeline

from .codec_property import MAX_TEXT, MODEL_WITHIN, ModelPipeline, run_model_pipeline
from .envelope_property import check
from .strategies import mutated

pytestmark = pytest.mark.model

EXAMPLES = int(os.environ.get("FUZZ_MODEL_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def model(loop: asyncio.AbstractEventLoop) -> Iterator[ModelPipeline]:
    built = run_model_pipeline(loop)
    yield built
    loop.run_until_complete(built.close())


def test_seeds_decode(loop: asyncio.AbstractEventLoop, model: ModelPipeline) -> None:
    # Every kind the fuzzer mutates decodes as made; otherwise mutations prove little.
    outcomes = [check(loop, seed, model.pipeline, MODEL_WITHIN) for seed in model.seeds]
    expected = ["lossy" if k.startswith("semantic") else "exact" for k in model.kinds]
    assert outcomes == expected, list(zip(model.kinds, outcomes, strict=True))
    assert set(model.kinds) >= {
        "zstd",
        "lossless",
        "semantic-extractive-coded",
        "semantic-extractive-packed",
        "semantic-abstractive-packed",
    }


@pytest.mark.timeout(3600)
@settings(
    max_examples=EXAMPLES,
    deadline=None,  # a hang is caught by check()'s wait_for and pytest-timeout
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_model_decoders_fuzz(
    loop: asyncio.AbstractEventLoop, model: ModelPipeline, data: st.DataObject
) -> None:
    # Drawn here: the seeds are made by the model, after collection.
    # Mostly edits that get past the header (the ZSTD fuzz covers header checks).
    deep = data.draw(st.integers(0, 9)) > 0
    envelope = data.draw(mutated(model.seeds, MAX_TEXT, deep=deep))
    OUTCOMES[check(loop, envelope, model.pipeline, MODEL_WITHIN)] += 1


OUTCOMES: Counter[str] = Counter()


def test_fuzz_outcomes_reached_the_decoders() -> None:
    """After the fuzz run: inputs got past the header checks into every kind of decode."""
    if not OUTCOMES:
        pytest.skip("runs after test_model_decoders_fuzz")
    print(f"\nmodel fuzz outcomes over {sum(OUTCOMES.values())} inputs: {dict(OUTCOMES)}")
    assert OUTCOMES["exact"] and OUTCOMES["lossy"] and OUTCOMES["DataLoss"], OUTCOMES


def test_a_forged_stream_stops_at_its_information_budget(
    loop: asyncio.AbstractEventLoop, model: ModelPipeline
) -> None:
    """A real 13-word LOSSLESS stream under a header claiming 2,000 tokens: decoding past
    the stream's information is refused long before the claimed count (the model's
    work stays about what a real stream of that size costs)."""
    seed = pb.Envelope.FromString(model.seeds[model.kinds.index("lossless") + 1])
    forged = pb.Envelope()
    forged.CopyFrom(seed)
    forged.original_length = forged.lossless.n_tokens = 2000  # one chunk (n_ctx 2048)
    data = forged.SerializeToString()
    with pytest.raises(DataLoss) as info:
        loop.run_until_complete(model.pipeline.reconstruct(data))
    stopped = int(re.search(r"token (\d+)", str(info.value))[1])  # type: ignore[index]
    real = seed.lossless.n_tokens
    print(f"\nforged: {len(seed.lossless.stream)} stream bytes, {real} real tokens, refused at "
          f"token {stopped} of the 2000 claimed")  # fmt: skip
    assert stopped < 4 * real + 64, (stopped, real)


def test_a_summary_beyond_the_embedded_models_context_is_a_precondition(
    loop: asyncio.AbstractEventLoop, model: ModelPipeline
) -> None:
    """An abstractive summary expanded by the embedded engine's own chat (as a server
    without Ollama does): one longer than its context gets FAILED_PRECONDITION, not
    INTERNAL."""
    config = model.pipeline.config
    own = Pipeline(config, {Mode.SEMANTIC: SemanticCodec(model.engine, config, local=True)})
    body = pb.SemanticBody(summary="The committee approved the budget. " * 400)
    data = seal(
        b"x" * 8_000, pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body), model.engine.identity
    )
    with pytest.raises(ContextExceeded) as info:
        loop.run_until_complete(own.reconstruct(data))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.embedded.n_ctx" in str(info.value)
