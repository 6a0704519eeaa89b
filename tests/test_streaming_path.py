"""The streaming path for cheap items: ZSTD items of a BatchCompress stream answered as they
are read, on the real server with its real telemetry.

What the fast path must keep: one answer per id, per-item errors, cache hits, every item
counted in the metrics and the stage window, spans per run of items, and the task path
(with its per-stage spans) for everything that is not cheap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import create_server
from llmcompress_server.flow.batch import INLINE_SPAN_ITEMS
from llmcompress_server.telemetry import setup_telemetry

from .conftest import make_config, metric_values

ITEMS = 600
LIMIT = 2000  # compression.max_text_bytes here: the items above it fail alone
TOO_BIG = {17, 301, 599}
REPEATED = {40: 4, 500: 6}  # item 40 repeats item 4's text: a cache hit


def _text(i: int) -> str:
    if i in TOO_BIG:
        return "x" * (LIMIT + 1)
    return f"record {REPEATED.get(i, i)}: the backup of host db-{REPEATED.get(i, i) % 7} finished"


async def test_cheap_items_answered_inline_keep_every_guarantee() -> None:
    # Short ZSTD texts are cached here (by default they are not), so the inline path's hits
    # are covered.
    config = make_config(compression={"max_text_bytes": LIMIT}, cache={"zstd_min_bytes": 0})
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = setup_telemetry(
        config, tracer_provider=provider, metric_readers=[reader], environ={}
    )
    app = await create_server(config, telemetry)
    await app.start()
    try:

        async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
            for i in range(ITEMS):
                mode = pb.MODE_LOSSLESS if i == 250 else pb.MODE_ZSTD
                if i == 250:  # needs the model's task path, answered by ZSTD: too short
                    yield pb.BatchCompressRequest(
                        id=str(i), request=pb.CompressRequest(text="  ", mode=mode)
                    )
                    continue
                yield pb.BatchCompressRequest(
                    id=str(i), request=pb.CompressRequest(text=_text(i), mode=mode)
                )

        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            answers = [a async for a in stub.BatchCompress(requests())]
            back = {}
            for a in answers:
                if a.HasField("result"):
                    r = await stub.Reconstruct(pb.ReconstructRequest(envelope=a.result.envelope))
                    back[a.id] = r.text
        items = metric_values(reader, "llmc_items")
        counts = {s.stage: s.count for s in app.stages.summary()}
        spans = exporter.get_finished_spans()
    finally:
        await app.stop(grace=0)
        telemetry.shutdown()
        provider.shutdown()

    # One answer per id; the items over the limit failed alone, the others round-trip.
    assert sorted(int(a.id) for a in answers) == list(range(ITEMS))
    errors = {int(a.id): a.error for a in answers if a.HasField("error")}
    assert set(errors) == TOO_BIG
    assert all(e.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for e in errors.values())
    assert all("compression.max_text_bytes" in e.message for e in errors.values())
    assert all(
        back[str(i)] == (_text(i) if i != 250 else "  ") for i in range(ITEMS) if i not in TOO_BIG
    )
    hits = {int(a.id) for a in answers if a.HasField("result") and a.result.stats.cache_hit}
    assert hits == set(REPEATED)

    # Metrics and the stage window count every item.
    ok = sum(
        v
        for k, v in items.items()
        if dict(k)["rpc"] == "BatchCompress" and dict(k)["outcome"] == "ok"
    )
    failed = sum(v for k, v in items.items() if dict(k)["outcome"] == "error")
    assert (ok, failed) == (ITEMS - len(TOO_BIG), len(TOO_BIG))
    assert counts["validate"] == ITEMS
    assert counts["zstd.encode"] == ITEMS - len(TOO_BIG) - len(REPEATED)
    assert counts["cache.lookup"] == ITEMS - len(TOO_BIG)

    # Spans: one per run of at most INLINE_SPAN_ITEMS inline items; the task-path item has
    # its own batch.item span with a span per stage.
    inline = [s for s in spans if s.name == "batch.inline"]
    sizes = [s.attributes["llmc.items"] for s in inline if s.attributes]
    assert sum(sizes) == ITEMS - 1 and max(sizes) <= INLINE_SPAN_ITEMS
    assert sum(s.attributes["llmc.errors"] for s in inline if s.attributes) == len(TOO_BIG)
    item = [s for s in spans if s.name == "batch.item"]
    assert [s.attributes["llmc.item.id"] for s in item if s.attributes] == ["250"]
    staged = {s.name for s in spans if s.parent and s.parent.span_id == item[0].context.span_id}
    assert {"validate", "zstd.encode", "pack"} <= staged
    assert not [
        s
        for s in spans
        if s.name in ("validate", "zstd.encode")
        and s.parent
        and s.parent.span_id in {i.context.span_id for i in inline}
    ]
