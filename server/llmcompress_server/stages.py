"""Stage timing: each pipeline stage is timed and opens an OpenTelemetry span.

One `StageClock` per request; its timings go back to the caller in the
response (`Stats.stages`) and feed the server's bottleneck report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from .errors import LLMCompressError

TRACER_NAME = "llmcompress_server"
tracer: Tracer = trace.get_tracer(TRACER_NAME)

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


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Send stage and LLM spans to `provider` (None: back to the global one)."""
    global tracer
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    return exc.code if isinstance(exc, LLMCompressError) else grpc.StatusCode.INTERNAL


def mark_failure(span: Span, exc: BaseException) -> None:
    """Record the exception; the span is an error only for a server-fault code."""
    span.record_exception(exc)
    code = status_code_of(exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {type(exc).__name__}"))


# Called with (stage, seconds, self_seconds) after every stage: `seconds` is
# the stage's whole duration, `self_seconds` that minus its nested stages.
StageObserver = Callable[[str, float, float], None]
_observers: list[StageObserver] = []
# Seconds spent in nested stages of the stage open in this context.
_nested: ContextVar[list[float] | None] = ContextVar("llmc_nested_stages", default=None)


def add_stage_observer(observer: StageObserver) -> None:
    _observers.append(observer)


def remove_stage_observer(observer: StageObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


class StageClock:
    """Records (stage, seconds) in order, and opens a span per stage."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str, **attributes: AttributeValue) -> Iterator[Span]:
        start = time.perf_counter()
        children: list[float] = [0.0]
        token = _nested.set(children)
        with tracer.start_as_current_span(
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
        for observer in _observers:
            observer(name, seconds, self_seconds)

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


# Called with (attributes, seconds, input_tokens, output_tokens) after each LLM call.
LLMObserver = Callable[[dict[str, AttributeValue], float, int, int], None]
_llm_observers: list[LLMObserver] = []


def add_llm_observer(observer: LLMObserver) -> None:
    _llm_observers.append(observer)


def remove_llm_observer(observer: LLMObserver) -> None:
    if observer in _llm_observers:
        _llm_observers.remove(observer)


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
    operation: str, model: str, provider: str, server_address: str, server_port: int = 0
) -> Iterator[LLMCall]:
    """A GenAI-convention client span ("{operation} {model}") around one model call."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
        "server.address": server_address,
    }
    if server_port:
        attributes["server.port"] = server_port
    start = time.perf_counter()
    with tracer.start_as_current_span(
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
            for observer in _llm_observers:
                observer(attributes, elapsed, call.input_tokens, call.output_tokens)
