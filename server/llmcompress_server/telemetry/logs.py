"""Logs for `llmc serve`: text or JSON lines, each with the current trace and span ids."""

from __future__ import annotations

import json
import logging
import time
from typing import IO, Any

from opentelemetry import trace

from ..core.config import LogFormat, MonitoringConfig

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
