"""What the service reports while it works, and where its spans go: one `Events`, passed down.

`create_server` builds one `Events` per server (its stage window for GetStats,
and `Metrics` when telemetry is on) and hands it to the pipeline, the cache and
the backends, so two servers in one process never count each other's work.
A backend opens each model call's span with `Events.llm_call`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from .errors import status_code_of

TRACER_NAME = "llmcompress_server"

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


def mark_failure(span: Span, exc: BaseException) -> None:
    """Record the exception; the span is an error only for a server-fault code."""
    span.record_exception(exc)
    code = status_code_of(exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {type(exc).__name__}"))


@dataclass(frozen=True)
class ModelCallEnded:
    """One model call as it ended: its GenAI span attributes (with `error.type` when it
    failed), its duration, its token counts as the backend reported them, and the backend
    (as `Stats.backend` names it: embedded, ollama, openai)."""

    attributes: Mapping[str, AttributeValue]
    seconds: float
    input_tokens: int = 0
    output_tokens: int = 0
    backend: str = ""

    @property
    def model(self) -> str:
        return str(self.attributes.get("gen_ai.request.model", ""))

    @property
    def operation(self) -> str:
        """chat, embeddings, or coding (LOSSLESS range coding: model evaluations, no text out)."""
        return str(self.attributes.get("gen_ai.operation.name", ""))

    @property
    def failed(self) -> bool:
        return "error.type" in self.attributes


@dataclass(frozen=True)
class CodingJobEnded:
    """One job on the LOSSLESS coding engine (encode, decode or a verify pass): seconds it
    waited for its first slot and then coded, its tokens, and the width it ran at."""

    kind: str
    wait_seconds: float
    coding_seconds: float
    tokens: int
    width: int


class EventSink(Protocol):
    """Receives the service's events; `Metrics` and the stage window implement it."""

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        """A pipeline stage ended: its whole duration, and that minus its nested stages."""

    def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
        """An item's stages, reported at once (each with no nested stages): as many
        `stage_finished` calls, for less than the cost of one each."""

    def model_called(self, call: ModelCallEnded) -> None:
        """A model call ended."""

    def cache_event(self, event: str, tier: str, seconds: float) -> None:
        """hit, miss (seconds = lookup time), store, evict, expire, corrupt, error (Redis
        failed or timed out), skip (Redis in backoff), coalesced (joined a request in flight)."""

    def backend_error(self, kind: str, endpoint: str) -> None:
        """A backend failure no model call reported: a timed-out attempt, a failed probe."""

    def coding_job(self, job: CodingJobEnded) -> None:
        """A job on the LOSSLESS coding engine ended."""

    def dictionary_trained(self, seconds: float, samples: int) -> None:
        """A corpus dictionary was trained and stored."""


class NullSink:
    """Ignores every event; a base for sinks that want only some of them."""

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        return None

    def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
        for stage, seconds in timings:
            self.stage_finished(stage, seconds, seconds)

    def model_called(self, call: ModelCallEnded) -> None:
        return None

    def cache_event(self, event: str, tier: str, seconds: float) -> None:
        return None

    def backend_error(self, kind: str, endpoint: str) -> None:
        return None

    def coding_job(self, job: CodingJobEnded) -> None:
        return None

    def dictionary_trained(self, seconds: float, samples: int) -> None:
        return None


class LLMCall:
    """What a backend learns about one model call; filled in inside `Events.llm_call`."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.input_tokens = 0
        self.output_tokens = 0

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


def _overrides(sink: EventSink, event: str) -> bool:
    """Whether `sink` has an `event` method of its own, not NullSink's."""
    return getattr(type(sink), event, None) is not getattr(NullSink, event)


def _taking(sinks: Sequence[EventSink], event: str) -> tuple[Callable[..., None], ...]:
    """The bound `event` methods of `sinks`, but for those that inherit NullSink's no-op."""
    return tuple(getattr(sink, event) for sink in sinks if _overrides(sink, event))


def _stages_of(sink: EventSink) -> Callable[[Sequence[tuple[str, float]]], None]:
    """The sink's `stages_finished`; for a sink written before it (no NullSink base), one
    that hands each stage to its `stage_finished`."""
    many: Callable[[Sequence[tuple[str, float]]], None] | None = getattr(
        sink, "stages_finished", None
    )
    if many is not None:
        return many
    one = sink.stage_finished

    def each(timings: Sequence[tuple[str, float]]) -> None:
        for stage, seconds in timings:
            one(stage, seconds, seconds)

    return each


class Events:
    """The sinks one server reports to, and the tracer its stage and model-call spans use.

    `Events()` reports nowhere and traces to the global tracer provider: for
    codecs and backends used outside a server (benchmarks, tests).
    """

    def __init__(self, sinks: Sequence[EventSink] = (), tracer: Tracer | None = None) -> None:
        self.sinks = tuple(sinks)
        self.tracer = tracer if tracer is not None else trace.get_tracer(TRACER_NAME)
        # The two events every streamed item sends several times go only to the sinks that
        # take them (not NullSink's no-ops): a call each is a µs a short item does not have.
        self._on_stage = _taking(self.sinks, "stage_finished")
        # NullSink's `stages_finished` hands each stage to `stage_finished`: a sink that
        # keeps both of NullSink's takes neither.
        self._on_stages = tuple(
            _stages_of(sink)
            for sink in self.sinks
            if _overrides(sink, "stage_finished") or _overrides(sink, "stages_finished")
        )
        self._on_cache = _taking(self.sinks, "cache_event")

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        for on_stage in self._on_stage:
            on_stage(stage, seconds, self_seconds)

    def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
        for on_stages in self._on_stages:
            on_stages(timings)

    def model_called(self, call: ModelCallEnded) -> None:
        for sink in self.sinks:
            sink.model_called(call)

    def cache_event(self, event: str, tier: str, seconds: float = 0.0) -> None:
        for on_cache in self._on_cache:
            on_cache(event, tier, seconds)

    def backend_error(self, kind: str, endpoint: str) -> None:
        for sink in self.sinks:
            sink.backend_error(kind, endpoint)

    def coding_job(self, job: CodingJobEnded) -> None:
        for sink in self.sinks:
            sink.coding_job(job)

    def dictionary_trained(self, seconds: float, samples: int) -> None:
        for sink in self.sinks:
            sink.dictionary_trained(seconds, samples)

    @contextmanager
    def llm_call(
        self,
        operation: str,
        model: str,
        provider: str,
        server_address: str,
        server_port: int = 0,
        backend: str | None = None,
    ) -> Iterator[LLMCall]:
        """A GenAI-convention client span ("{operation} {model}") around one model call,
        reported to the sinks when it ends; `backend` defaults to `provider`."""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "gen_ai.provider.name": provider,
            "server.address": server_address,
        }
        if server_port:
            attributes["server.port"] = server_port
        start = time.perf_counter()
        with self.tracer.start_as_current_span(
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
                self.model_called(
                    ModelCallEnded(
                        attributes,
                        elapsed,
                        call.input_tokens,
                        call.output_tokens,
                        backend or provider,
                    )
                )
