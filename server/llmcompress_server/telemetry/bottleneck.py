"""Recent per-stage latency, for `GetStats` / `llmc stats`: which stage ate the time.

The seed's `get_bottleneck_analysis().slowest_component`, computed from a
bounded window of samples fed by the stage clock. Stages nest (an encode
stage holds its LLM call), so the slowest stage is ranked by its own time,
nested stages excluded: the leaf that ate the time, not what encloses it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.events import NullSink


@dataclass(frozen=True)
class StageSummary:
    stage: str
    count: int
    p50: float
    p95: float
    p99: float
    total: float
    # p95 of the stage's own time (nested stages excluded); ranks the slowest.
    self_p95: float = 0.0


class StageWindow(NullSink):
    """Bounded deque of reports (time, the stages timed); old ones fall off.

    One per server: it is a sink of that server's `Events`, so GetStats reports
    only the server's own stages."""

    def __init__(self, max_samples: int = 200_000, window_seconds: float = 300.0) -> None:
        self.window_seconds = window_seconds
        # (time, stages): each stage (name, seconds) or (name, seconds, self seconds); one
        # entry per request's report, so a streamed item's stages cost one append.
        self._samples: deque[tuple[float, Sequence[tuple[Any, ...]]]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()  # stages may be recorded from worker threads

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        with self._lock:
            self._samples.append((time.monotonic(), ((stage, seconds, self_seconds),)))

    def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
        with self._lock:
            self._samples.append((time.monotonic(), tuple(timings)))

    def summary(self, window_seconds: float | None = None) -> list[StageSummary]:
        horizon = time.monotonic() - (window_seconds or self.window_seconds)
        by_stage: dict[str, list[tuple[float, float]]] = {}
        with self._lock:
            samples = list(self._samples)
        for at, timings in samples:
            if at < horizon:
                continue
            for timing in timings:
                seconds = timing[1]
                own = timing[2] if len(timing) > 2 else seconds
                by_stage.setdefault(timing[0], []).append((seconds, own))
        out = []
        for stage, values in by_stage.items():
            arr = np.asarray(values)
            p50, p95, p99 = np.percentile(arr[:, 0], [50, 95, 99])
            self_p95 = float(np.percentile(arr[:, 1], 95))
            out.append(
                StageSummary(stage, len(values), p50, p95, p99, float(arr[:, 0].sum()), self_p95)
            )
        out.sort(key=lambda s: s.total, reverse=True)
        return out

    @staticmethod
    def slowest(summaries: list[StageSummary]) -> str:
        """The stage with the largest p95 of its own time (what a slow request waits on)."""
        return max(summaries, key=lambda s: s.self_p95).stage if summaries else ""
