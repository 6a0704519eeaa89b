"""The service's own counters and histograms export what OTel's instruments would."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.telemetry.metrics import LATENCY_BUCKETS, Metrics
from llmcompress_server.telemetry.tally import (
    HistogramTally,
    Tally,
    attribute_key,
    export_histograms,
)

from .conftest import metric_values

# On and around the bucket bounds (a value equal to a bound belongs to that bucket).
VALUES = [0.0, 0.0005, 0.001, 0.0010001, 0.003, 0.5, 0.5, 2.0, 299.0, 300.0, 1e4]
LABELS = [{"mode": "zstd"}, {"mode": "lossless", "model": "m"}]


def _points(reader: InMemoryMetricReader, name: str) -> dict[frozenset[Any], Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        frozenset(p.attributes.items()): p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
    }


def test_a_histogram_tally_exports_what_an_otel_histogram_would() -> None:
    theirs_reader, ours_reader = InMemoryMetricReader(), InMemoryMetricReader()
    otel = MeterProvider(metric_readers=[theirs_reader]).get_meter("llmcompress_server")
    theirs = otel.create_histogram(
        "latency", unit="s", explicit_bucket_boundaries_advisory=LATENCY_BUCKETS
    )
    MeterProvider(metric_readers=[ours_reader])
    ours = HistogramTally("latency", "s", "", LATENCY_BUCKETS)
    export_histograms(
        [ours_reader], lambda: [ours], InstrumentationScope("llmcompress_server"), Resource({})
    )
    for i, value in enumerate(VALUES):
        theirs.record(value, LABELS[i % 2])
    # Half one by one, half at once (as a streamed item's stages are): the same points.
    half = len(VALUES) // 2
    for i, value in enumerate(VALUES[:half]):
        ours.record(value, LABELS[i % 2])
    ours.record_many(
        (value, attribute_key(LABELS[i % 2])) for i, value in enumerate(VALUES) if i >= half
    )

    expected, got = _points(theirs_reader, "latency"), _points(ours_reader, "latency")
    assert got.keys() == expected.keys() and len(got) == 2
    for key, point in expected.items():
        mine = got[key]
        assert list(mine.bucket_counts) == list(point.bucket_counts), dict(key)
        assert list(mine.explicit_bounds) == list(point.explicit_bounds)
        assert (mine.count, mine.sum, mine.min, mine.max) == (
            point.count,
            point.sum,
            point.min,
            point.max,
        )
    # Cumulative: a second collection holds the first one's points too.
    ours.record(0.002, LABELS[0])
    again = _points(ours_reader, "latency")[frozenset(LABELS[0].items())]
    assert again.count == expected[frozenset(LABELS[0].items())].count + 1


def test_a_tally_counts_every_add_from_many_threads() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("llmcompress_server")
    items = Tally()
    meter.create_observable_counter("items", callbacks=[items.observe])

    def count(n: int) -> None:
        for i in range(n):
            # The same labels in another order are the same series.
            items.add(
                1,
                {"rpc": "BatchCompress", "outcome": "ok"}
                if i % 2
                else {"outcome": "ok", "rpc": "BatchCompress"},
            )

    threads = [threading.Thread(target=count, args=(5000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items.add(3, {"rpc": "Compress", "outcome": "error"})
    points = _points(reader, "items")
    assert {dict(k)["rpc"]: p.value for k, p in points.items()} == {
        "BatchCompress": 20000,
        "Compress": 3,
    }


def test_items_are_counted_by_mode_and_by_the_dictionary_they_used() -> None:
    # `Metrics.compressed` keeps each item's attribute keys: the counts and labels must be
    # what they were when every item built its own.
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]))
    plain = pb.Stats(mode=pb.MODE_ZSTD, ratio=1.1, total_seconds=0.001)
    named = pb.Stats(mode=pb.MODE_ZSTD, ratio=2.0, total_seconds=0.001, dictionary="0a1b2c3d")
    degraded = pb.Stats(mode=pb.MODE_ZSTD, degraded=True, model="m", backend="ollama")
    for stats in (plain, named, named, degraded, plain):
        metrics.compressed("BatchCompress", stats)
    items = metric_values(reader, "llmc_items")
    assert items == {
        (("mode", "zstd"), ("outcome", "ok"), ("rpc", "BatchCompress")): 4,
        (("mode", "zstd"), ("outcome", "degraded"), ("rpc", "BatchCompress")): 1,
    }
    used = metric_values(reader, "llmc_dictionary_items")
    assert used == {(("dictionary", "0a1b2c3d"), ("mode", "zstd")): 2}
