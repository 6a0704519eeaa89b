"""Span trees of real RPCs (in-memory exporter): stages under the RPC span, client trace kept."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App, create_server
from llmcompress_server.core.config import Config
from llmcompress_server.core.events import Events, NullSink
from llmcompress_server.telemetry import Telemetry, configure_logging, setup_telemetry, stages
from llmcompress_server.telemetry.bottleneck import StageWindow
from tests.conftest import make_config

SERVICE = "/llmcompress.v1.CompressionService/"


@dataclass
class Traced:
    app: App
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    stub: pb_grpc.CompressionServiceStub


async def _traced(config: Config) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(
        config, tracer_provider=provider, metric_readers=[reader], environ={}
    )
    app = await create_server(config, telemetry)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            yield Traced(app, telemetry, exporter, reader, pb_grpc.CompressionServiceStub(channel))
    finally:
        await app.stop(grace=0)
        telemetry.shutdown()
        provider.shutdown()


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    async for t in _traced(make_config()):
        yield t


async def _finished(exporter: InMemorySpanExporter, rpc: str) -> list[ReadableSpan]:
    """All spans, once the server span of `rpc` has ended (it ends after the reply is sent)."""
    for _ in range(200):
        spans = list(exporter.get_finished_spans())
        if any(s.name == SERVICE + rpc for s in spans):
            return spans
        await asyncio.sleep(0.01)
    pytest.fail(f"no server span for {rpc} within 2 s")


def _one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _traceparent() -> tuple[int, int, str]:
    rng = random.Random()
    trace_id, span_id = rng.getrandbits(128), rng.getrandbits(64)
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-01"


async def test_compress_span_tree_keeps_client_trace(traced: Traced) -> None:
    trace_id, client_span, header = _traceparent()
    text = "Stages nest under the RPC span. " * 40
    await traced.stub.Compress(
        pb.CompressRequest(text=text, mode=pb.MODE_ZSTD), metadata=(("traceparent", header),)
    )
    spans = await _finished(traced.spans, "Compress")
    server = _one(spans, SERVICE + "Compress")
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == trace_id  # the client's trace goes on
    assert _parent_id(server) == client_span
    assert server.status.status_code is StatusCode.UNSET
    assert server.attributes is not None
    assert server.attributes["llmc.mode"] == "zstd"
    assert server.attributes["llmc.bytes"] == len(text.encode())
    for name in ("admission.wait", "validate", "zstd.encode", "pack"):
        stage = _one(spans, name)
        assert stage.context.trace_id == trace_id, name
        assert _parent_id(stage) == server.context.span_id, name
    encode = _one(spans, "zstd.encode")
    assert encode.attributes is not None
    assert encode.attributes["llmc.bytes"] == len(text.encode())


async def test_batch_item_span_tree(traced: Traced) -> None:
    # Three cheap ZSTD items are answered as they are read, under one batch.inline span;
    # an item that needs a task (SEMANTIC asked, stored as ZSTD: too short) gets a
    # batch.item span with a span per stage.
    trace_id, _, header = _traceparent()

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for i in range(3):
            yield pb.BatchCompressRequest(
                id=f"item-{i}",
                request=pb.CompressRequest(text=f"item {i} " * 30, mode=pb.MODE_ZSTD),
            )
        yield pb.BatchCompressRequest(
            id="item-3", request=pb.CompressRequest(text="too short", mode=pb.MODE_SEMANTIC)
        )

    answers = [
        r async for r in traced.stub.BatchCompress(requests(), metadata=[("traceparent", header)])
    ]
    assert sorted(a.id for a in answers) == ["item-0", "item-1", "item-2", "item-3"]
    # Every item still carries its stage timings; one answered inline seals its envelope
    # within `zstd.encode`, where the task path has a `pack` stage. Texts this short are
    # coded, not cached (`cache.zstd_min_bytes`): no cache stages on either path.
    inline_stages = ["validate", "zstd.encode"]
    task_stages = ["admission.wait", "validate", "zstd.encode", "pack"]
    for answer in answers:
        names = [t.stage for t in answer.result.stats.stages]
        assert names == (inline_stages if answer.id != "item-3" else task_stages)
    spans = await _finished(traced.spans, "BatchCompress")
    server = _one(spans, SERVICE + "BatchCompress")
    assert server.context.trace_id == trace_id
    inline = _one(spans, "batch.inline")
    assert _parent_id(inline) == server.context.span_id
    assert dict(inline.attributes or {}) | {"llmc.seconds": 0} == {
        "llmc.items": 3,
        "llmc.item.first_id": "item-0",
        "llmc.item.last_id": "item-2",
        "llmc.errors": 0,
        "llmc.seconds": 0,
    }
    assert not [s for s in spans if _parent_id(s) == inline.context.span_id]
    item = _one(spans, "batch.item")
    assert item.attributes and item.attributes["llmc.item.id"] == "item-3"
    assert _parent_id(item) == server.context.span_id
    children = {s.name for s in spans if _parent_id(s) == item.context.span_id}
    assert children == set(task_stages), children


async def test_client_errors_are_not_span_errors_server_faults_are(traced: Traced) -> None:
    # INVALID_ARGUMENT: the caller's fault; the span records it but is not an error.
    too_big = "x" * (traced.app.config.compression.max_text_bytes + 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await traced.stub.Compress(pb.CompressRequest(text=too_big, mode=pb.MODE_ZSTD))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = await _finished(traced.spans, "Compress")
    validate = _one(spans, "validate")
    assert validate.status.status_code is StatusCode.UNSET
    assert [e.name for e in validate.events] == ["exception"]
    assert _one(spans, SERVICE + "Compress").status.status_code is StatusCode.UNSET

    # DATA_LOSS: a corrupt envelope is a server-side fault code in OTel's gRPC mapping.
    traced.spans.clear()
    good = await traced.stub.Compress(pb.CompressRequest(text="a b c " * 50, mode=pb.MODE_ZSTD))
    env = pb.Envelope.FromString(good.envelope)
    frame = bytearray(env.zstd.frame)
    frame[len(frame) // 2] ^= 0x10
    env.zstd.frame = bytes(frame)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await traced.stub.Reconstruct(pb.ReconstructRequest(envelope=env.SerializeToString()))
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    spans = await _finished(traced.spans, "Reconstruct")
    failed = [
        s
        for s in spans
        if s.kind is not SpanKind.SERVER and any(e.name == "exception" for e in s.events)
    ]
    assert [s.name for s in failed] in (["zstd.decode"], ["checksum"])
    assert failed[0].status.status_code is StatusCode.ERROR
    assert _one(spans, SERVICE + "Reconstruct").status.status_code is StatusCode.ERROR


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, object], object]]:
    data = reader.get_metrics_data()
    out = []
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
    return out


async def test_items_counter_and_histograms(traced: Traced) -> None:
    for _ in range(2):
        await traced.stub.Compress(pb.CompressRequest(text="count me " * 20, mode=pb.MODE_ZSTD))
    with pytest.raises(grpc.aio.AioRpcError):
        await traced.stub.Compress(pb.CompressRequest(text="x", mode=99))  # type: ignore[arg-type]

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        yield pb.BatchCompressRequest(id="ok", request=pb.CompressRequest(text="fine " * 9))
        yield pb.BatchCompressRequest(id="bad", request=pb.CompressRequest(text="x", mode=77))  # type: ignore[arg-type]

    answers = [r async for r in traced.stub.BatchCompress(requests())]
    assert len(answers) == 2
    items = {
        (a["rpc"], a["outcome"], a.get("code", "")): p.value  # type: ignore[attr-defined]
        for a, p in _points(traced.metrics, "llmc_items")
    }
    assert items == {
        ("Compress", "ok", ""): 2,
        ("Compress", "error", "INVALID_ARGUMENT"): 1,
        ("BatchCompress", "ok", ""): 1,
        ("BatchCompress", "error", "INVALID_ARGUMENT"): 1,
    }
    latency = _points(traced.metrics, "compression_latency")
    assert sum(p.count for _, p in latency) == 3  # type: ignore[attr-defined]
    assert all(a["mode"] == "zstd" for a, _ in latency)
    stage_names = {a["stage"] for a, _ in _points(traced.metrics, "llmc_stage_duration")}
    assert {"validate", "zstd.encode", "pack"} <= stage_names
    queues = {a["queue"] for a, _ in _points(traced.metrics, "llmc_queue_depth")}
    assert queues == {"admission", "embedded", "coding"}


async def test_slow_request_log_has_stage_breakdown_and_no_text() -> None:
    config = make_config(monitoring={"slow_request_ms": 0.001, "log_format": "json"})
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging(config.monitoring, stream)
    secret = "do-not-log-this-sentence " * 170  # 4,250 bytes: a ZSTD text long enough to cache
    try:
        async for t in _traced(config):
            await t.stub.Compress(pb.CompressRequest(text=secret, mode=pb.MODE_ZSTD))
            spans = await _finished(t.spans, "Compress")
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    slow = [r for r in lines if r["logger"] == "llmcompress_server.slow"]
    assert len(slow) == 1, lines
    record = slow[0]
    assert [name for name, _ in record["stages_ms"]] == [
        "admission.wait",
        "validate",
        "cache.lookup",
        "zstd.encode",
        "pack",
        "cache.store",
    ]
    assert record["rpc"] == "Compress"
    assert record["trace_id"] == format(_one(spans, SERVICE + "Compress").context.trace_id, "032x")
    assert "do-not-log" not in stream.getvalue()


async def test_two_servers_in_one_process_keep_their_own_stages_and_metrics() -> None:
    """Each create_server reports to its own Events: nothing one server does shows up in the
    other's stage window (GetStats), metrics or traces."""
    made: list[tuple[Traced, AsyncIterator[Traced]]] = []
    for _ in range(2):
        run = _traced(make_config())
        made.append((await anext(run), run))
    (busy, _), (idle, _) = made
    try:
        text = "Only the first server compresses this. " * 30
        await busy.stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))
        await _finished(busy.spans, "Compress")

        def stage_names(t: Traced) -> set[str]:
            return {a["stage"] for a, _ in _points(t.metrics, "llmc_stage_duration")}

        assert {"validate", "zstd.encode", "pack"} <= {s.stage for s in busy.app.stages.summary()}
        assert idle.app.stages.summary() == []
        assert {"validate", "zstd.encode", "pack"} <= stage_names(busy)
        assert stage_names(idle) == set()
        assert _points(idle.metrics, "llmc_items") == []
        assert "zstd.encode" in {s.name for s in busy.spans.get_finished_spans()}
        assert idle.spans.get_finished_spans() == ()
    finally:
        for _, run in made:
            await run.aclose()


def test_slowest_stage_is_the_leaf_not_its_parent() -> None:
    # An outer stage that only waits on a nested one: the nested one ate the time.
    window = StageWindow()
    for _ in range(5):
        clock = stages.StageClock(Events([window]))
        with clock.stage("lossless.encode"), clock.stage("llm.call"):
            time.sleep(0.2)
        with clock.stage("pack"):
            clock.add("pack.measured_elsewhere", 0.001)
    summaries = {s.stage: s for s in window.summary()}
    # Whole durations: the enclosing stage is (a bit) longer than its child...
    assert summaries["lossless.encode"].p95 >= summaries["llm.call"].p95 >= 0.2
    # ...but its own time is next to nothing (microseconds when idle; the bound leaves a
    # loaded machine ten times the old 10 ms), so the child is named.
    assert summaries["lossless.encode"].self_p95 < 0.1
    assert StageWindow.slowest(list(summaries.values())) == "llm.call"


def test_stages_reported_at_once_reach_every_sink_as_stages() -> None:
    # compress_now reports an item's stages in one call: the window, a sink that only
    # overrides `stage_finished`, and one written without NullSink or `stages_finished`
    # (as tests/test_grouping.py's is) each see every stage; one that only overrides
    # `stages_finished` sees the stages reported at once.
    class Child(NullSink):
        def __init__(self) -> None:
            self.seen: list[tuple[str, float, float]] = []

        def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
            self.seen.append((stage, seconds, self_seconds))

    class Plain:
        def __init__(self) -> None:
            self.seen: list[tuple[str, float, float]] = []

        def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
            self.seen.append((stage, seconds, self_seconds))

        def cache_event(self, event: str, tier: str, seconds: float) -> None: ...

    class Many(NullSink):
        def __init__(self) -> None:
            self.seen: list[tuple[str, float]] = []

        def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
            self.seen.extend(timings)

    window, child, plain, many = StageWindow(), Child(), Plain(), Many()
    events = Events([window, child, plain, many])  # type: ignore[list-item]
    events.stages_finished([("validate", 0.001), ("zstd.encode", 0.002)])
    assert many.seen == [("validate", 0.001), ("zstd.encode", 0.002)]
    stages.StageClock(events).add("zstd.encode", 0.004)
    for sink in (child, plain):
        assert sink.seen == [
            ("validate", 0.001, 0.001),
            ("zstd.encode", 0.002, 0.002),
            ("zstd.encode", 0.004, 0.004),
        ]
    summaries = {s.stage: s for s in window.summary()}
    assert summaries["validate"].count == 1
    assert summaries["zstd.encode"].count == 2
    assert summaries["zstd.encode"].total == pytest.approx(0.006)


async def test_llm_call_span_and_genai_metrics(traced: Traced) -> None:
    from llmcompress_server.core.errors import BackendTimeout

    # What this server's backends report to: its stage window, its metrics, its tracer.
    events = traced.app.pipeline.events
    with events.llm_call("chat", "tiny-model", "ollama", "127.0.0.1", 11434) as call:
        call.usage(12, 34)
    with (
        pytest.raises(BackendTimeout),
        events.llm_call("chat", "tiny-model", "ollama", "127.0.0.1", 11434),
    ):
        raise BackendTimeout("no answer in 30 s", endpoint="http://127.0.0.1:11434")
    ok, failed = [s for s in traced.spans.get_finished_spans() if s.name == "chat tiny-model"]
    assert ok.kind is SpanKind.CLIENT
    assert ok.attributes is not None
    assert ok.attributes["gen_ai.usage.input_tokens"] == 12
    assert ok.attributes["gen_ai.usage.output_tokens"] == 34
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "BackendTimeout"
    assert failed.status.status_code is StatusCode.ERROR  # UNAVAILABLE: a server-side fault

    events.cache_event("hit", "memory")
    events.cache_event("miss", "memory")
    events.cache_event("miss", "memory")
    events.cache_event("evict", "memory")
    unregister = traced.telemetry.metrics.watch_backends(
        lambda: [("http://127.0.0.1:11434", 3)], lambda: []
    )
    try:
        inflight = _points(traced.metrics, "llmc_backend_inflight")
    finally:
        unregister()
    assert [(a["endpoint"], p.value) for a, p in inflight] == [("http://127.0.0.1:11434", 3)]  # type: ignore[attr-defined]
    assert _points(traced.metrics, "llmc_backend_inflight") == []
    cache = {a["result"]: p.value for a, p in _points(traced.metrics, "llmc_cache_lookups")}  # type: ignore[attr-defined]
    assert cache == {"hit": 1, "miss": 2}
    events = _points(traced.metrics, "llmc_cache_events")
    assert [(a["event"], p.value) for a, p in events] == [("evict", 1)]  # type: ignore[attr-defined]
    errors = _points(traced.metrics, "llmc_backend_errors")
    assert [(a["kind"], p.value) for a, p in errors] == [("BackendTimeout", 1)]  # type: ignore[attr-defined]
    tokens = {
        a["gen_ai.token.type"]: p.sum  # type: ignore[attr-defined]
        for a, p in _points(traced.metrics, "gen_ai.client.token.usage")
    }
    assert tokens == {"input": 12, "output": 34}
    durations = _points(traced.metrics, "gen_ai.client.operation.duration")
    assert sorted(str(a.get("error.type", "")) for a, _ in durations) == ["", "BackendTimeout"]


def test_tracer_provider_from_config_and_environment() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from llmcompress_server.telemetry import build_tracer_provider

    def exporters(provider: TracerProvider) -> list[type]:
        processors = provider._active_span_processor._span_processors  # no public accessor
        kinds = [type(p.span_exporter) for p in processors]  # type: ignore[attr-defined]
        provider.shutdown()
        return kinds

    monitoring = make_config().monitoring
    assert exporters(build_tracer_provider(monitoring, {})) == []
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert exporters(build_tracer_provider(monitoring, env)) == [OTLPSpanExporter]
    console = make_config(monitoring={"console_traces": True}).monitoring
    assert exporters(build_tracer_provider(console, {})) == [ConsoleSpanExporter]
    both = make_config(
        monitoring={"otlp_endpoint": "http://127.0.0.1:4317", "console_traces": True}
    )
    assert exporters(build_tracer_provider(both.monitoring, {})) == [
        OTLPSpanExporter,
        ConsoleSpanExporter,
    ]


async def test_llmc_serve_wires_telemetry_and_json_logs() -> None:
    """The entry point: `llmc serve` serves /metrics and logs JSON lines with the client's trace."""
    import os
    import sys

    import httpx

    from tests.test_serve_process import free_port

    port, metrics_port = free_port(), free_port()
    env = dict(
        os.environ,
        LLMC_MODEL__EMBEDDED__PRELOAD="false",
        LLMC_MONITORING__PROMETHEUS_PORT=str(metrics_port),
        LLMC_MONITORING__LOG_FORMAT="json",
        LLMC_MONITORING__SLOW_REQUEST_MS="0.001",
    )
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "llmcompress.cli", "serve", "--port", str(port)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    trace_id, _, header = _traceparent()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=60)
            stub = pb_grpc.CompressionServiceStub(channel)
            await stub.Compress(
                pb.CompressRequest(text="secret words " * 20, mode=pb.MODE_ZSTD),
                metadata=(("traceparent", header),),
            )
        async with httpx.AsyncClient(timeout=5) as http:
            metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        proc.terminate()
        raw, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    out = raw.decode()
    items = [line for line in metrics.splitlines() if line.startswith("llmc_items_total{")]
    assert len(items) == 1 and items[0].endswith(" 1.0"), items
    assert 'outcome="ok"' in items[0]
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    slow = [r for r in records if r["logger"] == "llmcompress_server.slow"]
    assert len(slow) == 1, out
    assert slow[0]["trace_id"] == format(trace_id, "032x")
    assert "secret words" not in out


async def test_admission_wait_shows_queueing(start_server: Any) -> None:
    # One request at a time: the second batch item waits for the first one's zstd.
    from tests.conftest import slow_text

    app = await start_server(performance={"max_queue": 1})
    texts = [slow_text(300_000, seed=1), slow_text(300_000, seed=2)]

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for i, text in enumerate(texts):
            yield pb.BatchCompressRequest(id=str(i), request=pb.CompressRequest(text=text))

    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        answers = [r async for r in stub.BatchCompress(requests())]
    timings = [dict((t.stage, t.seconds) for t in a.result.stats.stages) for a in answers]
    first, second = sorted(timings, key=lambda t: t["admission.wait"])
    assert second["admission.wait"] >= 0.5 * first["zstd.encode"] > 0


async def test_httpx_calls_get_client_spans_under_the_stage() -> None:
    """Outbound httpx (the Ollama/OpenAI backends' transport) is instrumented at setup."""
    import httpx

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Its own /metrics endpoint is a real local HTTP server to call.
    config = make_config(monitoring={"enable_prometheus": True, "prometheus_port": 0})
    telemetry = setup_telemetry(config, tracer_provider=provider, environ={})
    try:
        clock = stages.StageClock(Events(tracer=telemetry.tracer))
        async with httpx.AsyncClient(timeout=5) as client:
            with clock.stage("llm.summarize"):
                reply = await client.get(f"http://127.0.0.1:{telemetry.metrics_port}/metrics")
        assert reply.status_code == 200
    finally:
        telemetry.shutdown()
        provider.shutdown()
    spans = exporter.get_finished_spans()
    stage = _one(spans, "llm.summarize")
    (http_span,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert _parent_id(http_span) == stage.context.span_id
    assert http_span.attributes is not None
    assert (
        http_span.attributes.get(
            "http.response.status_code", http_span.attributes.get("http.status_code")
        )
        == 200
    )
