"""What the service reports while it works, and where its spans go: one `Events`, passed down.

`create_server` builds one `Events` per server (its stage window for GetStats,
and `Metrics` when telemetry is on) and hands it to the pipeline, the cache and
the backends, so two servers in one process never count each other's work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

TRACER_NAME = "llmcompress_server"


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

    def model_called(self, call: ModelCallEnded) -> None:
        """A model call ended."""

    def cache_event(self, event: str, tier: str, seconds: float) -> None:
        """hit, miss (seconds = lookup time), store, evict, expire, corrupt, error (Redis
        failed or timed out), skip (Redis in backoff), coalesced (joined a request in flight)."""

    def backend_error(self, kind: str, endpoint: str) -> None:
        """A backend failure no model call reported: a timed-out attempt, a failed probe."""

    def coding_job(self, job: CodingJobEnded) -> None:
        """A job on the LOSSLESS coding engine ended."""


class NullSink:
    """Ignores every event; a base for sinks that want only some of them."""

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        return None

    def model_called(self, call: ModelCallEnded) -> None:
        return None

    def cache_event(self, event: str, tier: str, seconds: float) -> None:
        return None

    def backend_error(self, kind: str, endpoint: str) -> None:
        return None

    def coding_job(self, job: CodingJobEnded) -> None:
        return None


class Events:
    """The sinks one server reports to, and the tracer its stage and model-call spans use.

    `Events()` reports nowhere and traces to the global tracer provider: for
    codecs and backends used outside a server (benchmarks, tests).
    """

    def __init__(self, sinks: Sequence[EventSink] = (), tracer: Tracer | None = None) -> None:
        self.sinks = tuple(sinks)
        self.tracer = tracer if tracer is not None else trace.get_tracer(TRACER_NAME)

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        for sink in self.sinks:
            sink.stage_finished(stage, seconds, self_seconds)

    def model_called(self, call: ModelCallEnded) -> None:
        for sink in self.sinks:
            sink.model_called(call)

    def cache_event(self, event: str, tier: str, seconds: float = 0.0) -> None:
        for sink in self.sinks:
            sink.cache_event(event, tier, seconds)

    def backend_error(self, kind: str, endpoint: str) -> None:
        for sink in self.sinks:
            sink.backend_error(kind, endpoint)

    def coding_job(self, job: CodingJobEnded) -> None:
        for sink in self.sinks:
            sink.coding_job(job)
