"""Set up once at the entry point (api/server.py `serve`): tracer provider, metrics, httpx spans.

Tests pass their own tracer provider and metric readers instead of touching
process globals.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, start_http_server

from ..core.config import Config, MonitoringConfig
from ..core.events import TRACER_NAME
from .cost import Pricing
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """What `setup_telemetry` built; `shutdown()` flushes and stops it."""

    monitoring: MonitoringConfig
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    metrics: Metrics
    # Where the server's stage and model-call spans go (this provider, not a global swap).
    tracer: Tracer
    # Bound /metrics address, when Prometheus is on (port 0 in config: any free port).
    metrics_port: int = 0
    _http: tuple[WSGIServer, threading.Thread] | None = None
    _httpx: HTTPXClientInstrumentor | None = None
    _owned_tracer_provider: bool = False
    _closed: bool = field(default=False)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._httpx is not None:
            self._httpx.uninstrument()
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self.meter_provider.shutdown()
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

    readers = list(metric_readers)
    registry: CollectorRegistry | None = None
    if monitoring.enable_prometheus:
        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    # No exemplars: neither export path sends them, and sampling one costs an OTel
    # record about as much as the record itself.
    resource = service_resource(env)
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
    )
    metrics = Metrics(meter_provider, Pricing.from_config(config.cost))
    metrics.export_histograms(readers, resource)
    # deploy/prometheus/alerts.yml compares quality with this series: the configured bar fires.
    threshold = monitoring.alert_quality_threshold
    meter_provider.get_meter("llmcompress_server").create_observable_gauge(
        "llmc_quality_alert_threshold",
        callbacks=[lambda options: [Observation(threshold)]],
        description="monitoring.alert_quality_threshold: LLMCompressQualityLow fires below it",
    )
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
    telemetry = Telemetry(monitoring, provider, meter_provider, metrics, tracer)
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
