"""Typed results: frozen dataclasses built from the protobuf answers, so callers
never need the generated code."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmcompress_proto.v1 import compression_pb2 as pb

from ._errors import LLMCompressError


class Mode(enum.Enum):
    """How a text is compressed; DEFAULT lets the server choose (its configured default)."""

    DEFAULT = "default"
    ZSTD = "zstd"
    LOSSLESS = "lossless"
    SEMANTIC = "semantic"


_MODE_TO_PB: dict[Mode, pb.Mode.ValueType] = {
    Mode.DEFAULT: pb.MODE_UNSPECIFIED,
    Mode.ZSTD: pb.MODE_ZSTD,
    Mode.LOSSLESS: pb.MODE_LOSSLESS,
    Mode.SEMANTIC: pb.MODE_SEMANTIC,
}
_MODE_FROM_PB: dict[int, Mode] = {int(v): k for k, v in _MODE_TO_PB.items()}


def mode_to_pb(mode: Mode | str) -> pb.Mode.ValueType:
    try:
        return _MODE_TO_PB[Mode(mode)]
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ValueError(f"mode {mode!r} is not one of {choices}") from None


def mode_from_pb(value: int) -> Mode:
    return _MODE_FROM_PB.get(value, Mode.DEFAULT)


@dataclass(frozen=True)
class StageTiming:
    """Wall time of one server-side pipeline stage."""

    stage: str
    seconds: float


@dataclass(frozen=True)
class Quality:
    """Measured scores of a lossy reconstruction."""

    similarity: float
    entity_recall: float
    chrf: float
    overall: float
    embedding_model: str

    @classmethod
    def from_pb(cls, q: pb.QualityScores) -> Quality:
        return cls(q.similarity, q.entity_recall, q.chrf, q.overall, q.embedding_model)


def _timings(stages: object) -> tuple[StageTiming, ...]:
    return tuple(StageTiming(s.stage, s.seconds) for s in stages)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CompressStats:
    """What one compression cost; ratio = original UTF-8 bytes / envelope bytes."""

    original_bytes: int
    compressed_bytes: int
    ratio: float
    requested_mode: Mode
    mode: Mode
    model: str
    backend: str
    cache_hit: bool
    degraded: bool
    reason: str
    quality: Quality | None
    stages: tuple[StageTiming, ...]
    total_seconds: float
    # BatchCompress near-duplicate grouping: the id of the group's first item ("" for
    # none), and whether the envelope holds the group's shared summary.
    group: str = ""
    shared_summary: bool = False
    # Bytes of the model-coded text carried by non-canonical tokens (split spans).
    piecewise_bytes: int = 0
    # The dictionary the envelope was coded with: the first 8 hex digits of its id ("" none).
    dictionary: str = ""

    @classmethod
    def from_pb(cls, s: pb.Stats) -> CompressStats:
        return cls(
            original_bytes=s.original_bytes,
            compressed_bytes=s.compressed_bytes,
            ratio=s.ratio,
            requested_mode=mode_from_pb(s.requested_mode),
            mode=mode_from_pb(s.mode),
            model=s.model,
            backend=s.backend,
            cache_hit=s.cache_hit,
            degraded=s.degraded,
            reason=s.reason,
            quality=Quality.from_pb(s.quality) if s.HasField("quality") else None,
            stages=_timings(s.stages),
            total_seconds=s.total_seconds,
            group=s.group,
            shared_summary=s.shared_summary,
            piecewise_bytes=s.piecewise_bytes,
            dictionary=s.dictionary,
        )


@dataclass(frozen=True)
class CompressResult:
    """A compressed text: the envelope (store it as is) and its stats.

    `attempts` counts the calls made, retries included (1 for stream items)."""

    envelope: bytes
    stats: CompressStats
    attempts: int = 1

    @property
    def ratio(self) -> float:
        return self.stats.ratio

    @property
    def mode(self) -> Mode:
        return self.stats.mode

    @property
    def degraded(self) -> bool:
        return self.stats.degraded

    @property
    def reason(self) -> str:
        return self.stats.reason

    @property
    def quality(self) -> Quality | None:
        return self.stats.quality

    @classmethod
    def from_pb(cls, resp: pb.CompressResponse, attempts: int = 1) -> CompressResult:
        return cls(resp.envelope, CompressStats.from_pb(resp.stats), attempts)


@dataclass(frozen=True)
class ReconstructResult:
    """The text back; `exact` means checksum-verified byte for byte."""

    text: str
    exact: bool
    mode: Mode
    model: str
    quality: Quality | None
    stages: tuple[StageTiming, ...]
    attempts: int = 1

    @classmethod
    def from_pb(cls, resp: pb.ReconstructResponse, attempts: int = 1) -> ReconstructResult:
        return cls(
            text=resp.text,
            exact=resp.exact,
            mode=mode_from_pb(resp.mode),
            model=resp.model,
            quality=Quality.from_pb(resp.quality) if resp.HasField("quality") else None,
            stages=_timings(resp.stages),
            attempts=attempts,
        )


@dataclass(frozen=True)
class BatchItem:
    """One item for `compress_stream`; options left None take the stream's defaults."""

    id: str
    text: str
    mode: Mode | str | None = None
    verify: bool | None = None
    target_ratio: float | None = None
    evaluate_quality: bool | None = None
    # A corpus dictionary's name or id; None: the stream's.
    dictionary: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """The one answer for one stream item: `result` or `error`, never both."""

    id: str
    result: CompressResult | None = None
    error: LLMCompressError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Progress:
    """Running totals of a `compress_stream`, passed to its `on_progress` callback."""

    sent: int
    done: int
    errors: int
    original_bytes: int
    compressed_bytes: int
    elapsed_seconds: float
    # Items sent again because the stream carrying them broke (each answered once).
    resent: int = 0
    # Answers dropped because their item had already been answered.
    duplicates: int = 0

    @property
    def ratio(self) -> float:
        """Ratio so far over the items that succeeded."""
        return self.original_bytes / self.compressed_bytes if self.compressed_bytes else 0.0

    @property
    def items_per_second(self) -> float:
        return self.done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


@dataclass(frozen=True)
class StageStats:
    """Latency percentiles (seconds) of one stage over the server's window."""

    stage: str
    count: int
    p50: float
    p95: float
    p99: float
    total_seconds: float
    # p95 of the stage's own time, nested stages excluded: what the slowest stage is judged by.
    self_p95: float = 0.0


@dataclass(frozen=True)
class CacheStats:
    """One cache tier of the server ("memory", "redis", or "total")."""

    tier: str
    hits: int
    misses: int
    hit_ratio: float
    size: int
    max_size: int
    avg_lookup_seconds: float
    available: bool
    errors: int
    bytes: int
    max_bytes: int


@dataclass(frozen=True)
class ModelUsage:
    """One backend, model and operation's successful calls since the server started.

    `operation` is "chat", "embeddings" or "coding" (LOSSLESS evaluations, as input
    tokens); `cost` is tokens x the server's `cost.prices`, and `reference_cost` (chat
    calls only) the same tokens at its `cost.reference` model's prices."""

    backend: str
    model: str
    operation: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: float
    reference_cost: float


@dataclass(frozen=True)
class ServerStats:
    """GetStats: per-stage percentiles (slowest total first), the slowest stage, caches,
    and the model calls' tokens and cost (`cost_saving`: 1 - chat cost / reference cost,
    None without a reference)."""

    stages: tuple[StageStats, ...]
    slowest_stage: str
    cache: tuple[CacheStats, ...]
    window_seconds: float
    usage: tuple[ModelUsage, ...] = ()
    cost: float = 0.0
    cost_reference: str = ""
    reference_cost: float = 0.0
    cost_saving: float | None = None

    @classmethod
    def from_pb(cls, r: pb.GetStatsResponse) -> ServerStats:
        return cls(
            stages=tuple(
                StageStats(s.stage, s.count, s.p50, s.p95, s.p99, s.total_seconds, s.self_p95)
                for s in r.stages
            ),
            slowest_stage=r.slowest_stage,
            cache=tuple(
                CacheStats(
                    c.tier,
                    c.hits,
                    c.misses,
                    c.hit_ratio,
                    c.size,
                    c.max_size,
                    c.avg_lookup_seconds,
                    c.available,
                    c.errors,
                    c.bytes,
                    c.max_bytes,
                )
                for c in r.cache
            ),
            window_seconds=r.window_seconds,
            usage=tuple(
                ModelUsage(
                    u.backend,
                    u.model,
                    u.operation,
                    u.calls,
                    u.input_tokens,
                    u.output_tokens,
                    u.cost,
                    u.reference_cost,
                )
                for u in r.usage
            ),
            cost=r.cost,
            cost_reference=r.cost_reference,
            reference_cost=r.reference_cost,
            cost_saving=r.cost_saving if r.HasField("cost_saving") else None,
        )
