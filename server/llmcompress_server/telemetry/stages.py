"""Stage timing: each pipeline stage is timed and opens an OpenTelemetry span.

One `StageClock` per request; its timings go back to the caller in the
response (`Stats.stages`) and, through the server's `Events`, to its
bottleneck report and metrics. `Events.llm_call` does the same for one model call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from ..core.events import Events, mark_failure

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
