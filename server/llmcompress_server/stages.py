"""Stage timing: each pipeline stage is timed and opens an OpenTelemetry span.

One `StageClock` per request; its timings go back to the caller in the
response (`Stats.stages`) and feed the server's bottleneck report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

tracer = trace.get_tracer("llmcompress_server")

# Called with (stage, seconds) after every stage; telemetry and stats register here.
StageObserver = Callable[[str, float], None]
_observers: list[StageObserver] = []


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
        with tracer.start_as_current_span(name, attributes=attributes) as span:
            try:
                yield span
            finally:
                elapsed = time.perf_counter() - start
                self.timings.append((name, elapsed))
                for observer in _observers:
                    observer(name, elapsed)

    def add(self, name: str, seconds: float) -> None:
        """Record a stage measured elsewhere (e.g. inside a worker thread)."""
        self.timings.append((name, seconds))
        for observer in _observers:
            observer(name, seconds)

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
        f"{operation} {model}", kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        call = LLMCall(span)
        try:
            yield call
        finally:
            elapsed = time.perf_counter() - start
            for observer in _llm_observers:
                observer(attributes, elapsed, call.input_tokens, call.output_tokens)
