"""SEMANTIC's extractive summary and model-coded bodies: each stage on real corpus passages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import build_codecs
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs import CompressOptions
from llmcompress_server.codecs.semantic import (
    SemanticCodec,
    keep_extract,
    unpack_body,
)
from llmcompress_server.codecs.semantic.embedder import MiniLMEmbedder
from llmcompress_server.codecs.semantic.entities import Entity, extract_entities, missing_entities
from llmcompress_server.codecs.semantic.extractive import rank_text, read_structure, render
from llmcompress_server.codecs.semantic.summarize import MAX_SUMMARY_CHARS, summarize
from llmcompress_server.codecs.semantic.summary_coding import coded_text, parse_coded_text
from llmcompress_server.coding.engine import JobTiming, StreamWork
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.envelope import open_envelope, seal
from llmcompress_server.telemetry.stages import StageClock
from tests.conftest import StartServer, make_config
from tests.test_semantic import GarbageBackend, passage


def test_units_are_verbatim_in_order_and_play_turns_keep_labels(
    corpus: list[dict[str, str]],
) -> None:
    prose = passage(corpus, "lcet10-0034")
    s = read_structure(prose)
    # Verbatim: every unit is a piece of the original, in order.
    at = 0
    for unit in s.units:
        found = prose.find(unit.text, at)
        assert found >= at, unit.text
        at = found + len(unit.text)
    assert not any(b.label or b.header for b in s.blocks)  # prose: no labels, no headers
    texts = [u.text for u in s.units]
    first = next(i for i, t in enumerate(texts) if t.startswith("FLEISCHHAUER demonstrated both"))
    assert texts[first].endswith("a truncated search.") and s.units[first].whole
    assert any(not u.whole for u in s.units)  # long sentences are cut at clauses
    assert "\n" in texts[0]  # hard-wrapped lines stay inside their sentence
    # Rendering every unit gives the original back, whitespace aside.
    assert " ".join(render(s, range(len(s.units))).split()) == " ".join(prose.split())
    play = read_structure(passage(corpus, "asyoulik-0196"))
    assert play.blocks[play.units[0].block].label == "ORLANDO "
    assert play.units[0].text == "What passion hangs these weights upon my tongue?"
    second = play.units[1]
    assert second.text == "I cannot speak to her, yet she urged conference."
    assert second.block == play.units[0].block and second.sep == "\n "  # the verse's wrap
    # Kept alone, a turn's second sentence keeps its speaker.
    assert render(play, [1]) == "ORLANDO I cannot speak to her, yet she urged conference."


def test_extract_fits_its_budget_in_original_order(corpus: list[dict[str, str]]) -> None:
    text = passage(corpus, "lcet10-0034")
    ranked = rank_text(MiniLMEmbedder(), text)
    units = ranked.structure.units
    assert sorted(ranked.order) == list(range(len(units)))
    for budget in (300, 800, 1600):
        kept = ranked.kept(budget)
        cut = ranked.pick(budget)
        assert 0.6 * budget < len(cut.encode("utf-8")) <= budget
        assert kept == sorted(kept)
        assert cut.startswith(units[kept[0]].text)
        assert cut.endswith(units[kept[-1]].text)
        assert ranked.holds_whole(cut)
    # The top-ranked pieces name the passage's subjects: FLEISCHHAUER's demo of
    # Personal Librarian for AM.
    top = " ".join(units[i].text for i in ranked.order[:3])
    assert "FLEISCHHAUER" in top and "Librarian" in top


def test_coded_text_layout_round_trips() -> None:
    facts = [Entity("number", "10,000"), Entity("name", "Personal Librarian")]
    text = coded_text("A summary.\nSecond line.", facts)
    assert text == "A summary.\nSecond line.\n\x1enumber\t10,000\nname\tPersonal Librarian"
    body = parse_coded_text(text)
    assert body.summary == "A summary.\nSecond line."
    assert [(f.kind, f.text) for f in body.facts] == [(f.kind, f.text) for f in facts]
    assert parse_coded_text("Only a summary.").summary == "Only a summary."
    # Layouts that would not parse back are refused (the body is brotli-packed instead).
    assert coded_text("x", [Entity("date", "June\n1992")]) is None
    assert coded_text("a \x1e b", []) is None


async def test_extractive_brotli_meets_target_with_facts_in_context(
    corpus: list[dict[str, str]],
) -> None:
    config = make_config(compression={"semantic_summary": "extractive", "semantic_coder": "brotli"})
    backend = GarbageBackend("unused")
    codec = SemanticCodec(backend, config)
    text = passage(corpus, "lcet10-0034")
    data = text.encode("utf-8")
    enc = await codec.encode(text, CompressOptions(target_ratio=8), StageClock())
    blob = seal(data, enc.envelope, enc.model)
    assert enc.envelope.mode == pb.MODE_SEMANTIC and enc.envelope.semantic.extractive
    # Whole sentences are the unit, so the fit lands a sentence or so below the target.
    assert len(data) / 8 * 0.7 < len(blob) <= len(data) / 8
    body = unpack_body(enc.envelope.semantic)
    assert len(body.summary) > len(data) / 6  # brotli keeps well over 1/8 of the text
    # The gate ran (compression.quality_gate: always): scored, with no model call.
    assert enc.quality is not None and enc.quality.overall >= config.model.quality_threshold
    back = await codec.decode(open_envelope(blob), StageClock())
    assert not back.exact and back.quality is not None and back.quality.entity_recall == 1.0
    assert back.text.startswith(body.summary)
    # Sentences carrying the text's entities come first: most are in the body, in context.
    entities = extract_entities(text)
    assert len(missing_entities(body.summary, entities)) <= len(entities) // 3
    assert backend.calls == []  # no model call either way


def test_keep_extract_appends_only_missing_facts() -> None:
    body = pb.SemanticBody(
        summary="Alice met the Hatter.",
        facts=[pb.Entity(kind="number", text="1865")],
        extractive=True,
    )
    assert keep_extract(body) == "Alice met the Hatter.\nFacts: 1865"


# ---- the real model ---------------------------------------------------------------


@pytest.mark.model
async def test_coded_extract_on_a_fresh_server_and_mismatch_refused(
    start_server: StartServer, corpus: list[dict[str, str]]
) -> None:
    """The default on the embedded engine: extractive, coded by the model; a second
    server reconstructs it, and a changed model or fingerprint is refused."""
    text = passage(corpus, "lcet10-0066")
    first = await start_server()
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        resp = await stub.Compress(
            pb.CompressRequest(text=text, mode=pb.MODE_SEMANTIC, target_ratio=5)
        )
    assert resp.stats.mode == pb.MODE_SEMANTIC and not resp.stats.degraded, resp.stats.reason
    assert resp.stats.model == "SmolLM2-135M-Instruct-Q4_1"
    env = pb.Envelope.FromString(resp.envelope)
    assert env.semantic.HasField("coded") and env.semantic.extractive
    assert not env.semantic.summary and not env.semantic.packed
    assert resp.stats.ratio >= 4.5, resp.stats
    await first.stop(grace=0)

    second = await start_server()
    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
        assert not back.exact and back.quality.entity_recall == 1.0
        # Format v2 stores no name for a packaged model; the registry supplies it.
        assert not env.model.name and back.model == "SmolLM2-135M-Instruct-Q4_1"
        assert missing_entities(back.text, extract_entities(text)) == []
        # The extract starts with a verbatim piece of the original (pieces are >= 50 chars).
        extract = " ".join(back.text.split("\nFacts: ")[0].split())
        assert len(extract) > 50 and extract[:50] in " ".join(text.split())

        other = pb.Envelope.FromString(resp.envelope)
        other.semantic.coded.fingerprint.n_ctx += 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Reconstruct(pb.ReconstructRequest(envelope=other.SerializeToString()))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "n_ctx" in (err.value.details() or "")

        other = pb.Envelope.FromString(resp.envelope)
        other.model.sha256_prefix ^= 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Reconstruct(pb.ReconstructRequest(envelope=other.SerializeToString()))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model" in (err.value.details() or "")


async def test_large_summary_budget_stays_under_the_grammar_limit() -> None:
    """The coder's bigger budgets once asked llama.cpp for a maxLength its grammar parser
    aborts the process on; the schema is capped."""
    backend = GarbageBackend('{"summary": "two words"}')
    await summarize(backend, "text " * 400, 20_000, retries=0, temperature=0.0)
    schema = backend.calls[0].json_schema
    assert schema is not None
    assert schema["properties"]["summary"]["maxLength"] == MAX_SUMMARY_CHARS  # type: ignore[index]


@pytest.mark.model
async def test_compress_takes_two_coding_passes(
    monkeypatch: pytest.MonkeyPatch, corpus: list[dict[str, str]]
) -> None:
    """A coded extract costs one coding pass (every prefix's size comes from it) and one
    verifying decode: two token-by-token passes of the model, plus the ranking."""
    config = make_config()
    engine = EmbeddedEngine(config.model.embedded)
    await engine.start()
    codec = build_codecs(config, engine, engine)[Mode.SEMANTIC]
    assert isinstance(codec, SemanticCodec)
    passes: list[int] = []
    real = engine.coding.run

    async def counted(streams: Sequence[StreamWork], *args: Any) -> JobTiming:
        passes.append(sum(w.n_tokens for w in streams))  # tokens in this pass
        return await real(streams, *args)

    monkeypatch.setattr(engine.coding, "run", counted)
    clock = StageClock()
    try:
        encoded = await codec.encode(
            passage(corpus, "lcet10-0034"), CompressOptions(target_ratio=8), clock
        )
    finally:
        await engine.close()
    assert encoded.envelope.semantic.HasField("coded")
    assert len(passes) == 2, passes
    stages = [name for name, _ in clock.timings]
    assert stages.count("semantic.code") == 1 and stages.count("semantic.verify") == 1
    assert "semantic.rank" in stages and "semantic.gate" in stages
