"""Counters and histograms kept in plain Python, exported through OTel at each collection.

The OTel SDK's `Counter.add` and `Histogram.record` cost 6-19 µs each (a Measurement
object, its attributes cleaned and hashed, three layers of consumers), and a streamed
short record took about ten of them: more than its zstd work and the rest of the
service's path together. OTel has no way to record pre-aggregated values (no count
argument, open-telemetry/opentelemetry-specification#3369), so these keep the same
cumulative aggregates themselves, for a dict update and a bisect, and hand them over
when a reader collects:

- a `Tally` through an observable counter (public API);
- a `HistogramTally` as a histogram point appended to what the reader collected
  (`export_histograms`), under the same instrumentation scope, so Prometheus and any
  other reader see the same series, buckets, sum, count, min and max as before.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

AttributeKey = frozenset[tuple[str, Any]]
_NO_ATTRIBUTES: AttributeKey = frozenset()


def attribute_key(attributes: Mapping[str, Any] | None) -> AttributeKey:
    return frozenset(attributes.items()) if attributes else _NO_ATTRIBUTES


class Tally:
    """A monotonic counter per attribute set; `observe` is its observable counter's callback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # items are counted from worker threads too
        self._values: dict[AttributeKey, float] = {}

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        self.add_keyed(amount, attribute_key(attributes))

    def add_keyed(self, amount: float, key: AttributeKey) -> None:
        """`add` with the attribute set already a key (`attribute_key`)."""
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._lock:
            values = list(self._values.items())
        for key, value in values:
            yield Observation(value, dict(key))


class HistogramTally:
    """An explicit-bucket histogram per attribute set, cumulative since it was made.

    Buckets follow OTel's rule: bucket i counts values in (bounds[i-1], bounds[i]], the
    last one everything above the last bound."""

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.bounds = tuple(bounds)
        self.start_ns = time.time_ns()
        self._lock = threading.Lock()
        # attribute set -> [bucket counts, count, sum, min, max]
        self._points: dict[AttributeKey, list[Any]] = {}

    def record(self, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        self.record_keyed(value, attribute_key(attributes))

    def record_keyed(self, value: float, key: AttributeKey) -> None:
        """`record` with the attribute set already a key (`attribute_key`)."""
        with self._lock:
            self._add(value, key)

    def record_many(self, values: Iterable[tuple[float, AttributeKey]]) -> None:
        """`record_keyed` for each (value, key), under one lock."""
        with self._lock:
            for value, key in values:
                self._add(value, key)

    def _add(self, value: float, key: AttributeKey) -> None:
        point = self._points.get(key)
        if point is None:
            point = [[0] * (len(self.bounds) + 1), 0, 0.0, math.inf, -math.inf]
            self._points[key] = point
        point[0][bisect.bisect_left(self.bounds, value)] += 1
        point[1] += 1
        point[2] += value
        if value < point[3]:
            point[3] = value
        if value > point[4]:
            point[4] = value

    def metric(self, now_ns: int) -> Metric | None:
        """The histogram as OTel's exporters take it (None before its first record)."""
        with self._lock:
            points = [(key, list(p[0]), *p[1:]) for key, p in self._points.items()]
        if not points:
            return None
        data_points = [
            HistogramDataPoint(
                attributes=dict(key),
                start_time_unix_nano=self.start_ns,
                time_unix_nano=now_ns,
                count=count,
                sum=total,
                bucket_counts=buckets,
                explicit_bounds=self.bounds,
                min=low,
                max=high,
            )
            for key, buckets, count, total, low, high in points
        ]
        histogram = Histogram(data_points, AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self.description, self.unit, histogram)


def export_histograms(
    readers: Sequence[MetricReader],
    histograms: Callable[[], Sequence[HistogramTally]],
    scope: InstrumentationScope,
    resource: Resource,
) -> None:
    """Make every reader's collection include `histograms()` under `scope`.

    The SDK offers no public hook for externally aggregated points (its MetricProducer
    is not in the Python SDK), so this wraps the collect callback the MeterProvider gave
    each reader; call it after the MeterProvider is built. Cumulative points only, which
    is what the Prometheus and in-memory readers use."""
    for reader in readers:
        collect = getattr(reader, "_collect", None)
        if collect is None:
            raise RuntimeError(
                f"{type(reader).__name__} has no collect callback: build the MeterProvider "
                "with this reader before exporting histograms to it"
            )

        def merged(
            r: MetricReader,
            timeout_millis: float = 10_000,
            _collect: Callable[..., MetricsData | None] = collect,
        ) -> MetricsData | None:
            data = _collect(r, timeout_millis=timeout_millis)
            now = time.time_ns()
            extra = [m for h in histograms() if (m := h.metric(now)) is not None]
            return _with(data, extra, scope, resource) if extra else data

        # The SDK types this callback as returning Metrics; MeterProvider's returns MetricsData.
        reader._collect = merged  # type: ignore[assignment]


def _with(
    data: MetricsData | None,
    extra: list[Metric],
    scope: InstrumentationScope,
    resource: Resource,
) -> MetricsData:
    if data is None or not data.resource_metrics:
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, extra, "")], "")])
    first, *rest = data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, sm in enumerate(scopes):
        if sm.scope.name == scope.name:
            scopes[i] = replace(sm, metrics=[*sm.metrics, *extra])
            break
    else:
        scopes.append(ScopeMetrics(scope, extra, ""))
    return MetricsData([replace(first, scope_metrics=scopes), *rest])
