"""The model pipeline the fuzzers decode with: ZSTD, LOSSLESS and SEMANTIC on the real
embedded model, and real envelopes of every body kind to start from.

Seeds are made by the codecs themselves (LOSSLESS streams and coded SEMANTIC bodies by
the model's coder; plain and brotli-packed SEMANTIC bodies by `pack_body`), short, so
that a mutated stream costs seconds of model work, not minutes. Abstractive bodies are
expanded by a chat backend that is not the embedded engine, as in production (the
embedded engine's own chat takes 10-40 s a call on this loaded machine, which would
leave room for a handful of inputs): the simulated Ollama, started on the same loop.
test_codec_fuzz.py checks the embedded chat's one failure a forged summary can cause.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.backends.router import BackendRouter, build_text_backend
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.codecs.semantic import SemanticCodec, pack_body, summary_coding
from llmcompress_server.codecs.semantic.entities import Entity
from llmcompress_server.codecs.zstd import ZstdCodec
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.envelope import seal
from llmcompress_server.flow.pipeline import Pipeline

from ..conftest import make_config
from ..sim_ollama import SimOllama, SimOptions
from .envelope_property import SEEDS as ZSTD_SEEDS

# Claimed lengths above this are refused before decoding; a LOSSLESS stream's own size
# bounds its model work below that (coding/rows.py `StreamDecoder`).
MAX_TEXT = 16 * 1024
# A hang detector for one input on a loaded 2-core machine, not a speed bound: the
# largest seed decodes in a few seconds, a mutated one in at most about twice that.
MODEL_WITHIN = 600.0

LOSSLESS_TEXTS = (
    "héllo wörld 🙂",
    "Alice was beginning to get very tired of sitting by her sister.",
)
SUMMARY = "The committee met in Geneva on 3 March 2021 and approved 4 projects."
FACTS = [Entity("name", "Dr. Okafor"), Entity("money", "$1.2 million")]
ORIGINAL = (
    "On 3 March 2021 the committee met in Geneva. Dr. Okafor presented the budget of "
    "$1.2 million, and after a long discussion the members approved 4 projects."
)


@dataclass
class ModelPipeline:
    pipeline: Pipeline
    engine: EmbeddedEngine
    chat: BackendRouter
    sim: SimOllama
    seeds: list[bytes]
    kinds: list[str]

    async def close(self) -> None:
        await self.pipeline.close()
        await self.chat.close()
        await self.engine.close()
        await self.sim.close()


def _semantic(body: pb.SemanticBody, engine: EmbeddedEngine) -> bytes:
    return seal(
        ORIGINAL.encode("utf-8"),
        pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body),
        engine.identity,
    )


async def model_pipeline() -> ModelPipeline:
    """The pipeline and its seeds; call `close()` when done."""
    sim = await SimOllama(SimOptions(slots=4, latency=0.0)).start()
    config = make_config(
        model={"backend": "ollama", "ollama": {"endpoints": [sim.url]}},
        compression={"max_text_bytes": MAX_TEXT},
        llm={"fallback_embedded": False, "health_interval": 0, "retry_base_delay": 0.01},
    )
    engine = EmbeddedEngine(config.model.embedded)
    await engine.start()
    chat = build_text_backend(config, engine, environ={})
    assert isinstance(chat, BackendRouter)
    lossless = LosslessCodec(engine)
    codecs = {
        Mode.ZSTD: ZstdCodec(19),
        Mode.LOSSLESS: lossless,
        Mode.SEMANTIC: SemanticCodec(chat, config, lossless=lossless),
    }
    pipeline = Pipeline(config, codecs)
    seeds, kinds = [ZSTD_SEEDS[2], ZSTD_SEEDS[4]], ["zstd", "zstd"]
    for text in LOSSLESS_TEXTS:
        data = text.encode("utf-8")
        tokens = (await lossless.tokenize(data)).tokens
        body = await lossless.encode_tokens(tokens)
        env = pb.Envelope(mode=pb.MODE_LOSSLESS, lossless=body)
        seeds.append(seal(data, env, engine.identity))
        kinds.append("lossless")
    layout = summary_coding.coded_text(SUMMARY, FACTS)
    assert layout is not None
    coded = await summary_coding.code_prefixes(lossless, [layout], limit=1 << 20)
    assert coded is not None
    whole = coded.prefixes[-1]
    body = pb.LosslessBody(
        fingerprint=coded.fingerprint, stream=whole.stream, n_tokens=whole.tokens
    )
    seeds.append(_semantic(pb.SemanticBody(coded=body, extractive=True), engine))
    kinds.append("semantic-extractive-coded")
    for extractive in (True, False):
        kind = "extractive" if extractive else "abstractive"
        packed = pack_body(SUMMARY + " " + SUMMARY, FACTS)
        assert packed.packed  # brotli wins on the repeated sentence
        packed.extractive = extractive
        seeds.append(_semantic(packed, engine))
        kinds.append(f"semantic-{kind}-packed")
        plain = pack_body(SUMMARY, FACTS[:1])
        plain.extractive = extractive
        seeds.append(_semantic(plain, engine))
        kinds.append(f"semantic-{kind}-{'packed' if plain.packed else 'plain'}")
    return ModelPipeline(pipeline, engine, chat, sim, seeds, kinds)


def run_model_pipeline(loop: asyncio.AbstractEventLoop) -> ModelPipeline:
    return loop.run_until_complete(model_pipeline())
