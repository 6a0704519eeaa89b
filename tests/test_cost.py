"""Token and cost accounting: what the backend reported, times `cost.prices`, on a real /metrics.

The simulated Ollama reports tokenizer-like counts (tests/sim_ollama.py) and
keeps its own totals per model; the server's counters and GetStats must equal
them, and the cost must equal them times the configured prices.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App, create_server
from llmcompress_server.telemetry import Telemetry, setup_telemetry
from tests.conftest import SimFactory, StartServer, load_corpus, make_config
from tests.sim_ollama import SimOllama

CHAT = "qwen2.5:7b-instruct-q4_k_m"  # the standard tier the SEMANTIC codec asks for
EMBED = "nomic-embed-text"
REFERENCE = "gpt-4o-mini"
EMBEDDED = "SmolLM2-135M-Instruct-Q4_1"
# Per million tokens: a local model priced at what its hardware costs, a cloud reference.
PRICES = {
    CHAT: {"input": 0.02, "output": 0.08},
    EMBED: {"input": 0.01, "output": 0.0},
    REFERENCE: {"input": 0.15, "output": 0.6},
}


@dataclass
class Priced:
    app: App
    telemetry: Telemetry
    sim: SimOllama


@pytest.fixture
async def priced(sim_ollama: SimFactory) -> AsyncIterator[Priced]:
    sim = await sim_ollama(slots=4, latency=0.01)
    config = make_config(
        # The sim's echoed summaries score low; this test is about what the calls cost.
        model={"backend": "ollama", "ollama": {"endpoints": [sim.url]}, "quality_threshold": 0},
        monitoring={"enable_prometheus": True, "prometheus_port": 0},
        llm={"rate_limit": 0, "fallback_embedded": False, "health_interval": 0},
        cost={"prices": PRICES, "reference": REFERENCE},
    )
    provider = TracerProvider()
    telemetry = setup_telemetry(config, tracer_provider=provider, environ={})
    app = await create_server(config, telemetry)
    await app.start()
    try:
        yield Priced(app, telemetry, sim)
    finally:
        await app.stop(grace=0)
        telemetry.shutdown()
        provider.shutdown()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """A real GET of /metrics: {sample name: {sorted labels: value}}."""
    url = f"http://127.0.0.1:{port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: dict[tuple[tuple[str, str], ...], float], **wanted: str) -> float:
    return sum(v for labels, v in samples.items() if wanted.items() <= dict(labels).items())


def cost_of(model: str, tokens_in: int, tokens_out: int) -> float:
    price = PRICES[model]
    return (tokens_in * price["input"] + tokens_out * price["output"]) / 1e6


async def test_semantic_calls_count_reported_tokens_times_prices(priced: Priced) -> None:
    sim, app = priced.sim, priced.app
    passages = [p["text"] for p in load_corpus()[:6]]
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        for text in passages:
            # Target 2: at the default 10 these ~400-byte passages leave no room for a
            # sentence and are stored exactly, with no model call to count.
            request = pb.CompressRequest(
                text=text,
                mode=pb.MODE_SEMANTIC,
                target_ratio=2.0,
                evaluate_quality=True,
                skip_cache=True,
            )
            done = await stub.Compress(request)
            assert done.stats.mode == pb.MODE_SEMANTIC, done.stats.reason
        stats = await stub.GetStats(pb.GetStatsRequest())

    reported_in, reported_out = sim.stats.input_tokens, sim.stats.output_tokens
    # Realistic counts: different per call, and not the words of the prompts.
    assert reported_in[CHAT] > 0 and reported_out[CHAT] > 0
    assert sim.stats.completed >= len(passages)

    metrics = await asyncio.to_thread(scrape, priced.telemetry.metrics_port)
    tokens = metrics["llmc_model_tokens_total"]
    cost = metrics["llmc_cost_total"]
    # Calls counted by kind: generation (chat) and embeddings apart, as the backend got them.
    calls = metrics["llmc_model_calls_total"]
    assert (
        total(calls, backend="ollama", model=CHAT, operation="chat") == sim.stats.paths["/api/chat"]
    )
    embeds = sim.stats.paths.get("/api/embed", 0)
    assert total(calls, backend="ollama", operation="embeddings") == embeds
    for model in {*reported_in, *reported_out}:
        got_in = total(tokens, backend="ollama", model=model, type="input")
        got_out = total(tokens, backend="ollama", model=model, type="output")
        assert (got_in, got_out) == (reported_in[model], reported_out[model]), model
        want = cost_of(model, reported_in[model], reported_out[model])
        assert want > 0
        assert total(cost, backend="ollama", model=model) == pytest.approx(want, rel=1e-9)

    # GetStats: the same tokens and costs, and the saving against the reference.
    rows = {(u.backend, u.model, u.operation): u for u in stats.usage}
    chat = rows[("ollama", CHAT, "chat")]
    assert (chat.input_tokens, chat.output_tokens) == (reported_in[CHAT], reported_out[CHAT])
    assert chat.calls == sim.stats.paths["/api/chat"]
    assert chat.cost == pytest.approx(cost_of(CHAT, chat.input_tokens, chat.output_tokens))
    reference = cost_of(REFERENCE, chat.input_tokens, chat.output_tokens)
    assert chat.reference_cost == pytest.approx(reference)
    assert stats.cost_reference == REFERENCE
    assert stats.reference_cost == pytest.approx(reference)
    assert stats.HasField("cost_saving")
    assert stats.cost_saving == pytest.approx(1 - chat.cost / reference)
    assert stats.cost == pytest.approx(sum(u.cost for u in stats.usage))
    if EMBED in reported_in:  # quality scored with the backend's embeddings
        embed = rows[("ollama", EMBED, "embeddings")]
        assert embed.input_tokens == reported_in[EMBED] and embed.reference_cost == 0


async def test_unpriced_model_costs_zero_and_no_reference_no_saving(
    sim_ollama: SimFactory,
) -> None:
    sim = await sim_ollama(latency=0.0)
    config = make_config(
        model={"backend": "ollama", "ollama": {"endpoints": [sim.url]}},
        llm={"rate_limit": 0, "fallback_embedded": False, "health_interval": 0},
    )
    app = await create_server(config)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            text = load_corpus()[0]["text"]
            await stub.Compress(
                pb.CompressRequest(text=text, mode=pb.MODE_SEMANTIC, target_ratio=2.0)
            )
            stats = await stub.GetStats(pb.GetStatsRequest())
    finally:
        await app.stop(grace=0)
    chat = next(u for u in stats.usage if u.operation == "chat")
    assert chat.input_tokens == sim.stats.input_tokens[chat.model] > 0
    assert chat.cost == 0 and stats.cost == 0
    assert stats.cost_reference == "" and not stats.HasField("cost_saving")


@pytest.mark.model
async def test_embedded_chat_and_lossless_coding_are_counted(start_server: StartServer) -> None:
    """The embedded engine's own counts for chat; for LOSSLESS one evaluation per token and
    pass (encode, verify, reconstruct), as input tokens of operation "coding"."""
    from llmcompress_server.backends import ChatRequest

    app: App = await start_server(cost={"prices": {EMBEDDED: {"input": 0.5, "output": 1.0}}})
    assert app.engine is not None
    text = load_corpus()[3]["text"][:400]
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        done = await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS))
        envelope = pb.Envelope.FromString(done.envelope)
        n_tokens = envelope.lossless.n_tokens
        after_compress = await stub.GetStats(pb.GetStatsRequest())
        await stub.Reconstruct(pb.ReconstructRequest(envelope=done.envelope))
        answer = await app.engine.chat(
            ChatRequest([{"role": "user", "content": "Say hello."}], max_tokens=8)
        )
        final = await stub.GetStats(pb.GetStatsRequest())

    def row(stats: pb.GetStatsResponse, operation: str) -> pb.ModelUsage:
        return next(u for u in stats.usage if u.operation == operation)

    assert n_tokens > 50
    coding = row(after_compress, "coding")
    assert (coding.backend, coding.model) == ("embedded", EMBEDDED)
    assert (coding.calls, coding.input_tokens, coding.output_tokens) == (2, 2 * n_tokens, 0)
    coding = row(final, "coding")
    assert (coding.calls, coding.input_tokens) == (3, 3 * n_tokens)
    assert coding.cost == pytest.approx(3 * n_tokens * 0.5 / 1e6)
    chat = row(final, "chat")
    assert (chat.input_tokens, chat.output_tokens) == (answer.input_tokens, answer.output_tokens)
    assert chat.input_tokens > 0 and chat.output_tokens > 0
    assert coding.reference_cost == 0  # no reference configured, and coding has no counterpart
