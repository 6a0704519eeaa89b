"""OpenTelemetry for the service: traces, Prometheus metrics and logs, set up once at start-up.

`setup_telemetry(config)` runs at the entry point (`app.serve`); tests pass their
own tracer provider and metric readers instead of touching process globals.

Prometheus series (OTel's name mapping adds the unit and `_total` suffixes):

    compression_latency_seconds        histogram  mode, model, backend (per Compress/batch item)
    reconstruction_latency_seconds     histogram  mode, model
    compression_ratio                  histogram  mode, model, backend (original / envelope bytes)
    quality_score                      histogram  mode, model, backend (QualityScores.overall)
    llmc_stage_duration_seconds        histogram  stage (whole stage, nested stages included)
    llmc_items_total                   counter    rpc, outcome=ok|degraded|error, code (errors)
    llmc_queue_depth                   gauge      queue=admission|embedded
    llmc_backend_inflight              gauge      endpoint (from `register_inflight` probes)
    llmc_backend_up                    gauge      endpoint: 1 up, 0 down (`register_backend_up`)
    llmc_backend_errors_total          counter    kind (exception class, or health_probe),
                                                  server_address (host)
    llmc_cache_lookups_total           counter    tier, result=hit|miss
    llmc_cache_events_total            counter    tier, event (store, evict, error, ...)
    gen_ai_client_operation_duration_seconds  histogram  GenAI semconv attributes
    gen_ai_client_token_usage          histogram  gen_ai_token_type=input|output, ...

The seed's `throughput_per_minute` is `sum(rate(llmc_items_total[1m])) * 60`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, start_http_server

from llmcompress.v1 import compression_pb2 as pb

from . import cache, stages
from .config import Config, LogFormat, MonitoringConfig

log = logging.getLogger(__name__)
slow_log = logging.getLogger("llmcompress_server.slow")

# Latencies span a 1 ms zstd call to a minutes-long CPU summary.
LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
# Ratios are original/envelope bytes: about 1-4 for zstd, 5-50 for summaries.
RATIO_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
# The GenAI semantic conventions' advised boundaries.
GENAI_DURATION_BUCKETS: tuple[float, ...] = (
    *(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
    *(1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

METHOD_PREFIX = "/llmcompress.v1.CompressionService/"
_TEXT_IN_LOG = 500  # characters, only with monitoring.log_text

# A probe returns (label, value) pairs when the gauges are read.
Probe = Callable[[], Iterable[tuple[str, int]]]
_inflight_probes: list[Probe] = []
_up_probes: list[Probe] = []
_live: list[Metrics] = []


def _register(probes: list[Probe], probe: Probe) -> Callable[[], None]:
    probes.append(probe)
    return lambda: probes.remove(probe) if probe in probes else None


def register_inflight(probe: Probe) -> Callable[[], None]:
    """Report in-flight calls per backend endpoint as `llmc_backend_inflight{endpoint}`.

    For backend pools: `probe()` returns (endpoint, in_flight) pairs and is
    called at each scrape. Returns a function that unregisters the probe.
    """
    return _register(_inflight_probes, probe)


def register_backend_up(probe: Probe) -> Callable[[], None]:
    """Report (endpoint, 1 healthy / 0 down) pairs as `llmc_backend_up{endpoint}`, like
    `register_inflight`."""
    return _register(_up_probes, probe)


def record_cache(tier: str, hit: bool) -> None:
    """Count one cache lookup (`llmc_cache_lookups_total{tier, result}`)."""
    for metrics in _live:
        metrics.observe_cache("hit" if hit else "miss", tier)


def record_backend_error(kind: str, endpoint: str) -> None:
    """Count a backend failure that did not surface through `stages.llm_call`
    (e.g. an attempt the pool timed out, a failed health probe). `endpoint` may
    be a URL: the label is its host, as `llm_call`'s `server.address`."""
    address = urlsplit(endpoint).hostname or endpoint
    for metrics in _live:
        metrics.backend_errors.add(1, {"kind": kind, "server.address": address})


def _mode_name(mode: int) -> str:
    return pb.Mode.Name(mode).removeprefix("MODE_").lower()  # type: ignore[arg-type]


class Metrics:
    """The service's OTel instruments, fed by stage/LLM observers and the request interceptor."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter("llmcompress_server")
        self.compression_latency = meter.create_histogram(
            "compression_latency",
            unit="s",
            description="Time to compress one text (Compress call or batch item)",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.reconstruction_latency = meter.create_histogram(
            "reconstruction_latency",
            unit="s",
            description="Time to reconstruct one envelope",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.compression_ratio = meter.create_histogram(
            "compression_ratio",
            description="Original UTF-8 bytes / serialized envelope bytes",
            explicit_bucket_boundaries_advisory=RATIO_BUCKETS,
        )
        self.quality_score = meter.create_histogram(
            "quality_score",
            description="Overall quality score of a lossy result, 0..1",
            explicit_bucket_boundaries_advisory=SCORE_BUCKETS,
        )
        self.stage_duration = meter.create_histogram(
            "llmc_stage_duration",
            unit="s",
            description="Duration of one pipeline stage, nested stages included",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.items = meter.create_counter(
            "llmc_items", description="Compress calls and BatchCompress items answered, by outcome"
        )
        self.backend_errors = meter.create_counter(
            "llmc_backend_errors", description="Failed model backend calls, by kind"
        )
        self.cache_lookups = meter.create_counter(
            "llmc_cache_lookups", description="Cache lookups by tier and result"
        )
        self.cache_events = meter.create_counter(
            "llmc_cache_events", description="Other cache events (store, evict, error, ...)"
        )
        self.llm_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS,
        )
        self.llm_tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=GENAI_TOKEN_BUCKETS,
        )
        self.queue_probes: list[Probe] = []
        meter.create_observable_gauge(
            "llmc_queue_depth",
            callbacks=[self._observe_queues],
            description="Requests queued or running, per queue",
        )
        meter.create_observable_gauge(
            "llmc_backend_inflight",
            callbacks=[self._observe_inflight],
            description="Calls in flight per model backend endpoint",
        )
        meter.create_observable_gauge(
            "llmc_backend_up",
            callbacks=[self._observe_up],
            description="1 when a model backend endpoint is healthy, 0 when cooling down "
            "after failures or failing its health probes",
        )

    def _observe_queues(self, options: CallbackOptions) -> Iterable[Observation]:
        for probe in list(self.queue_probes):
            for queue, depth in probe():
                yield Observation(depth, {"queue": queue})

    def _observe_inflight(self, options: CallbackOptions) -> Iterable[Observation]:
        return _per_endpoint(_inflight_probes)

    def _observe_up(self, options: CallbackOptions) -> Iterable[Observation]:
        return _per_endpoint(_up_probes)

    def observe_cache(self, event: str, tier: str, seconds: float = 0.0) -> None:
        """Shaped as a cache observer (event, tier, seconds): hit/miss are lookups."""
        if event in ("hit", "miss"):
            self.cache_lookups.add(1, {"tier": tier, "result": event})
        else:
            self.cache_events.add(1, {"tier": tier, "event": event})

    def observe_stage(self, stage: str, seconds: float, self_seconds: float) -> None:
        self.stage_duration.record(seconds, {"stage": stage})

    def observe_llm(
        self,
        attributes: dict[str, AttributeValue],
        seconds: float,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        self.llm_duration.record(seconds, attributes)
        error = attributes.get("error.type")
        if error == "CancelledError":
            return  # the caller went away, or the pool's timeout fired (the pool counts that)
        if error is not None:
            server = attributes.get("server.address", "")
            self.backend_errors.add(1, {"kind": error, "server.address": server})
            return
        for kind, count in (("input", input_tokens), ("output", output_tokens)):
            self.llm_tokens.record(count, {**attributes, "gen_ai.token.type": kind})

    def compressed(self, rpc: str, stats: pb.Stats) -> None:
        attrs = {"mode": _mode_name(stats.mode), "model": stats.model, "backend": stats.backend}
        self.compression_latency.record(stats.total_seconds, attrs)
        self.compression_ratio.record(stats.ratio, attrs)
        if stats.HasField("quality"):
            self.quality_score.record(stats.quality.overall, attrs)
        outcome = "degraded" if stats.degraded else "ok"
        self.items.add(1, {"rpc": rpc, "outcome": outcome, "mode": attrs["mode"]})

    def failed(self, rpc: str, code: grpc.StatusCode) -> None:
        self.items.add(1, {"rpc": rpc, "outcome": "error", "code": code.name})


def _per_endpoint(probes: list[Probe]) -> Iterator[Observation]:
    for probe in list(probes):
        for endpoint, value in probe():
            yield Observation(value, {"endpoint": endpoint})


def _stage_breakdown(timings: Iterable[pb.StageTiming]) -> list[tuple[str, float]]:
    return [(t.stage, round(t.seconds * 1e3, 3)) for t in timings]


if TYPE_CHECKING:  # grpc's stubs make it generic; the runtime class is not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class RequestMetricsInterceptor(_ServerInterceptor):
    """Counts items by outcome, records the request histograms, logs slow requests.

    Sits inside the error interceptor, so it sees domain exceptions before
    they become statuses, and every BatchCompress item as it is sent.
    """

    def __init__(self, metrics: Metrics, monitoring: MonitoringConfig) -> None:
        self.metrics = metrics
        self.monitoring = monitoring

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None or not method.startswith(METHOD_PREFIX):
            return handler
        rpc = method.removeprefix(METHOD_PREFIX)
        inner: Any = handler.unary_unary or handler.stream_stream
        if rpc in ("Compress", "Reconstruct") and handler.unary_unary is not None:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    if rpc == "Compress":
                        self.metrics.failed(rpc, _code_of(exc, context))
                    raise
                self._answered(rpc, request, response, time.perf_counter() - start)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if rpc == "BatchCompress" and handler.stream_stream is not None:

            async def stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for response in inner(requests, context):
                    if response.HasField("error"):
                        self.metrics.failed(rpc, _CODES.get(response.error.code, _UNKNOWN))
                    else:
                        stats = response.result.stats
                        self.metrics.compressed(rpc, stats)
                        self._maybe_slow(rpc, stats.total_seconds, stats.stages, stats, None)
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _answered(self, rpc: str, request: Any, response: Any, seconds: float) -> None:
        if rpc == "Compress":
            self.metrics.compressed(rpc, response.stats)
            self._maybe_slow(rpc, seconds, response.stats.stages, response.stats, request.text)
        else:
            attrs = {"mode": _mode_name(response.mode), "model": response.model}
            self.metrics.reconstruction_latency.record(seconds, attrs)
            self._maybe_slow(rpc, seconds, response.stages, None, response.text)

    def _maybe_slow(
        self,
        rpc: str,
        seconds: float,
        timings: Iterable[pb.StageTiming],
        stats: pb.Stats | None,
        text: str | None,
    ) -> None:
        threshold_ms = self.monitoring.slow_request_ms
        if threshold_ms <= 0 or seconds * 1e3 <= threshold_ms:
            return
        breakdown = _stage_breakdown(timings)
        extra: dict[str, Any] = {
            "rpc": rpc,
            "elapsed_ms": round(seconds * 1e3, 3),
            "threshold_ms": threshold_ms,
            "stages_ms": breakdown,
        }
        if stats is not None:
            extra.update(
                mode=_mode_name(stats.mode),
                model=stats.model,
                backend=stats.backend,
                original_bytes=stats.original_bytes,
                compressed_bytes=stats.compressed_bytes,
            )
        if self.monitoring.log_text and text is not None:
            extra["text"] = text[:_TEXT_IN_LOG]
        parts = ", ".join(f"{name} {ms:.1f} ms" for name, ms in breakdown)
        slow_log.warning(
            "slow %s: %.1f ms (threshold %g ms); stages: %s",
            rpc,
            seconds * 1e3,
            threshold_ms,
            parts or "none recorded",
            extra=extra,
        )


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_UNKNOWN = grpc.StatusCode.UNKNOWN


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else _UNKNOWN
    if not isinstance(exc, Exception):
        return grpc.StatusCode.CANCELLED  # the client went away
    return stages.status_code_of(exc)


@dataclass
class Telemetry:
    """What `setup_telemetry` built; `shutdown()` flushes and stops it."""

    monitoring: MonitoringConfig
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    metrics: Metrics
    # Bound /metrics address, when Prometheus is on (port 0 in config: any free port).
    metrics_port: int = 0
    _http: tuple[WSGIServer, threading.Thread] | None = None
    _httpx: HTTPXClientInstrumentor | None = None
    _owned_tracer_provider: bool = False
    _closed: bool = field(default=False)

    def server_interceptors(
        self, inner: Sequence[grpc.aio.ServerInterceptor[Any, Any]]
    ) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """Tracing outermost (its span covers everything), then `inner`, then the metrics."""
        return [
            tracing_interceptor(self.tracer_provider),
            *inner,
            RequestMetricsInterceptor(self.metrics, self.monitoring),
        ]

    def watch_queue(self, probe: Probe) -> None:
        """Report `probe()`'s (queue, depth) pairs as `llmc_queue_depth{queue}`."""
        self.metrics.queue_probes.append(probe)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        stages.remove_stage_observer(self.metrics.observe_stage)
        stages.remove_llm_observer(self.metrics.observe_llm)
        cache.remove_cache_observer(self.metrics.observe_cache)
        if self.metrics in _live:
            _live.remove(self.metrics)
        if self._httpx is not None:
            self._httpx.uninstrument()
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self.meter_provider.shutdown()
        stages.use_tracer_provider(None)
        if self._owned_tracer_provider:
            self.tracer_provider.shutdown()


def tracing_interceptor(
    provider: TracerProvider | None = None,
) -> grpc.aio.ServerInterceptor[Any, Any]:
    """opentelemetry-instrumentation-grpc's server spans; `traceparent` metadata parents them.

    Health checks are not traced: probes every few seconds would drown the
    traces, and the aio interceptor cannot wrap Health/Watch, which streams
    with `context.write` instead of yielding.
    """
    interceptor: grpc.aio.ServerInterceptor[Any, Any] = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=filters.negate(filters.health_check())
    )
    return interceptor


def service_resource(environ: Mapping[str, str]) -> Resource:
    return Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "llmcompress")})


def build_tracer_provider(
    monitoring: MonitoringConfig, environ: Mapping[str, str]
) -> TracerProvider:
    """Spans always exist (logs carry their trace ids); export goes to OTLP when an
    endpoint is configured, to the console on request, and nowhere otherwise."""
    provider = TracerProvider(resource=service_resource(environ))
    endpoint = monitoring.otlp_endpoint or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # Headers, certificates and timeouts still come from the OTEL_EXPORTER_OTLP_* variables;
        # an http:// endpoint means an insecure channel.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if monitoring.console_traces:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def setup_telemetry(
    config: Config,
    *,
    tracer_provider: TracerProvider | None = None,
    metric_readers: Sequence[MetricReader] = (),
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Build traces, metrics and httpx instrumentation from config, once, at the entry point.

    A tracer provider built here from config also becomes the process-global one
    (OTel allows that once per process); one passed in (tests) is used by this
    service only.
    """
    monitoring = config.monitoring
    env = os.environ if environ is None else environ
    owned = tracer_provider is None
    provider = tracer_provider or build_tracer_provider(monitoring, env)
    if owned:
        trace.set_tracer_provider(provider)
    stages.use_tracer_provider(provider)

    readers = list(metric_readers)
    registry: CollectorRegistry | None = None
    if monitoring.enable_prometheus:
        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    meter_provider = MeterProvider(metric_readers=readers, resource=service_resource(env))
    metrics = Metrics(meter_provider)
    stages.add_stage_observer(metrics.observe_stage)
    stages.add_llm_observer(metrics.observe_llm)
    cache.add_cache_observer(metrics.observe_cache)
    _live.append(metrics)

    telemetry = Telemetry(monitoring, provider, meter_provider, metrics)
    telemetry._owned_tracer_provider = owned
    httpx_instrumentor = HTTPXClientInstrumentor()
    if not httpx_instrumentor.is_instrumented_by_opentelemetry:
        httpx_instrumentor.instrument(tracer_provider=provider, meter_provider=meter_provider)
        telemetry._httpx = httpx_instrumentor
    if registry is not None:
        try:
            server, thread = start_http_server(
                monitoring.prometheus_port, monitoring.prometheus_host, registry=registry
            )
        except OSError as exc:
            telemetry.shutdown()
            raise OSError(
                f"cannot serve Prometheus metrics on {monitoring.prometheus_host}:"
                f"{monitoring.prometheus_port} ({exc.strerror}); set monitoring.prometheus_port "
                "or monitoring.enable_prometheus: false"
            ) from exc
        telemetry._http = (server, thread)
        telemetry.metrics_port = server.server_port
        log.info(
            "Prometheus metrics on http://%s:%d/metrics",
            monitoring.prometheus_host,
            telemetry.metrics_port,
        )
    return telemetry


# Attributes every LogRecord has; anything else was passed in `extra=`.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class TraceContextFilter(logging.Filter):
    """Adds the current span's trace_id and span_id (hex, or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace ids and `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The classic one-line format, with the trace id appended inside a span."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            line += f" trace_id={trace_id} span_id={getattr(record, 'span_id', '')}"
        return line


def configure_logging(monitoring: MonitoringConfig, stream: IO[str] | None = None) -> None:
    """Root logging for `llmc serve`: text or JSON (monitoring.log_format), with trace ids."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContextFilter())
    formatter: logging.Formatter
    if monitoring.log_format is LogFormat.JSON:
        formatter = JsonFormatter()
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.converter = time.gmtime  # UTC, as the JSON's "Z" says
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(monitoring.log_level.upper())
