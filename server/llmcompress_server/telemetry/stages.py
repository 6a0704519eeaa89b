"""Stage timing: each pipeline stage is timed and opens an OpenTelemetry span.

One `StageClock` per request; its timings go back to the caller in the
response (`Stats.stages`) and, through the server's `Events`, to its
bottleneck report and metrics. `llm_call` does the same for one model call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ..core.errors import LLMCompressError
from ..core.events import Events, ModelCallEnded

# Codes that mean the server (or its backend) failed, not the caller; the same
# set opentelemetry-instrumentation-grpc marks as errors on the server span.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    return exc.code if isinstance(exc, LLMCompressError) else grpc.StatusCode.INTERNAL


def mark_failure(span: Span, exc: BaseException) -> None:
    """Record the exception; the span is an error only for a server-fault code."""
    span.record_exception(exc)
    code = status_code_of(exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {type(exc).__name__}"))


# Seconds spent in nested stages of the stage open in this context.
_nested: ContextVar[list[float] | None] = ContextVar("llmc_nested_stages", default=None)


class StageClock:
    """Records (stage, seconds) in order, opens a span per stage and reports each to `events`."""

    def __init__(self, events: Events | None = None) -> None:
        self.events = events if events is not None else Events()
        self.timings: list[tuple[str, float]] = []
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str, **attributes: AttributeValue) -> Iterator[Span]:
        start = time.perf_counter()
        children: list[float] = [0.0]
        token = _nested.set(children)
        with self.events.tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as exc:
                mark_failure(span, exc)
                raise
            finally:
                _nested.reset(token)
                elapsed = time.perf_counter() - start
                # Concurrent nested stages can sum past the parent's wall time.
                self._record(name, elapsed, max(elapsed - children[0], 0.0))

    def add(self, name: str, seconds: float) -> None:
        """Record a stage measured elsewhere (e.g. inside a worker thread)."""
        self._record(name, seconds, seconds)

    def _record(self, name: str, seconds: float, self_seconds: float) -> None:
        parent = _nested.get()
        if parent is not None:
            parent[0] += seconds
        self.timings.append((name, seconds))
        self.events.stage_finished(name, seconds, self_seconds)

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


class LLMCall:
    """What a backend learns about one model call; filled in inside `llm_call`."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.input_tokens = 0
        self.output_tokens = 0

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


@contextmanager
def llm_call(
    events: Events,
    operation: str,
    model: str,
    provider: str,
    server_address: str,
    server_port: int = 0,
    backend: str | None = None,
) -> Iterator[LLMCall]:
    """A GenAI-convention client span ("{operation} {model}") around one model call,
    reported to `events` when it ends; `backend` defaults to `provider`."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
        "server.address": server_address,
    }
    if server_port:
        attributes["server.port"] = server_port
    start = time.perf_counter()
    with events.tracer.start_as_current_span(
        f"{operation} {model}",
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        call = LLMCall(span)
        try:
            yield call
        except BaseException as exc:
            # GenAI conventions: `error.type` on the span and the duration metric.
            attributes["error.type"] = type(exc).__name__
            span.set_attribute("error.type", type(exc).__name__)
            mark_failure(span, exc)
            raise
        finally:
            elapsed = time.perf_counter() - start
            events.model_called(
                ModelCallEnded(
                    attributes,
                    elapsed,
                    call.input_tokens,
                    call.output_tokens,
                    backend or provider,
                )
            )
