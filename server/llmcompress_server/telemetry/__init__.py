"""What the service measures: stage timing, the stage window GetStats reads, token cost, and
OpenTelemetry traces, Prometheus metrics and logs, set up once at start-up."""

from .logs import JsonFormatter, TextFormatter, TraceContextFilter, configure_logging
from .metrics import Metrics
from .setup import Telemetry, build_tracer_provider, setup_telemetry, tracing_interceptor

__all__ = [
    "JsonFormatter",
    "Metrics",
    "Telemetry",
    "TextFormatter",
    "TraceContextFilter",
    "build_tracer_provider",
    "configure_logging",
    "setup_telemetry",
    "tracing_interceptor",
]
