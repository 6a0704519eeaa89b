"""Per-mode measurements against a running server: ratio from envelope bytes, compress and
reconstruct latency, exactness, and the per-stage timings the server returns.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc

MODES: dict[str, pb.Mode.ValueType] = {
    "zstd": pb.MODE_ZSTD,
    "lossless": pb.MODE_LOSSLESS,
    "semantic": pb.MODE_SEMANTIC,
}
TIERS: dict[str, pb.Quality.ValueType] = {
    "default": pb.QUALITY_UNSPECIFIED,
    "low": pb.QUALITY_LOW,
    "standard": pb.QUALITY_STANDARD,
    "high": pb.QUALITY_HIGH,
}
EXACT_MODES = {"zstd", "lossless"}
_PROBE = "A short probe text, used only to find out which modes this server offers."


@dataclass
class ItemResult:
    """One text through Compress and Reconstruct, `iterations` times."""

    id: str
    bucket: str
    original_bytes: int
    envelope_bytes: int
    ratio: float  # original_bytes / envelope_bytes, computed here from the envelope
    server_ratio: float  # Stats.ratio as the server reported it
    compress_seconds: list[float]
    reconstruct_seconds: list[float]
    exact: bool  # reconstructed text == original, compared here byte for byte
    server_exact: bool  # ReconstructResponse.exact
    stored_mode: str
    degraded: bool
    reason: str
    model: str
    backend: str
    compress_stages: list[tuple[str, float]] = field(default_factory=list)
    reconstruct_stages: list[tuple[str, float]] = field(default_factory=list)


async def discover_modes(stub: pb_grpc.CompressionServiceStub, names: list[str]) -> dict[str, str]:
    """mode -> "" if offered, else why not. FAILED_PRECONDITION means "not on this server"."""
    found: dict[str, str] = {}
    for name in names:
        mode = MODES[name]
        try:
            await stub.Compress(
                pb.CompressRequest(text=_PROBE, mode=mode, skip_cache=True), timeout=600
            )
            found[name] = ""
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            found[name] = err.details() or "not available"
    return found


def bucket_of(size: int, edges: list[int]) -> str:
    """Label of the size bucket; edges are ascending byte bounds, e.g. [1024, 2048, 4096]."""
    lower = 0
    for edge in edges:
        if size < edge:
            return f"{_kb(lower)}-{_kb(edge)}" if lower else f"<{_kb(edge)}"
        lower = edge
    return f">={_kb(lower)}"


def bucket_labels(edges: list[int]) -> list[str]:
    return [bucket_of(e - 1, edges) for e in edges] + [bucket_of(edges[-1], edges)]


def _kb(n: int) -> str:
    return f"{n / 1024:g} KB"


async def measure_mode(
    stub: pb_grpc.CompressionServiceStub,
    mode: str,
    passages: list[dict[str, str]],
    edges: list[int],
    iterations: int = 1,
    tier: str = "default",
) -> tuple[list[ItemResult], list[dict[str, str]]]:
    """Compress then Reconstruct each passage, sequentially, bypassing the cache.

    Returns the results and the items whose calls failed (id, status, details).
    """
    results = []
    failures: list[dict[str, str]] = []
    for row in passages:
        text = row["text"]
        data = text.encode("utf-8")
        request = pb.CompressRequest(text=text, mode=MODES[mode], quality=TIERS[tier])
        request.skip_cache = True  # measure the work, not the cache
        compress_s: list[float] = []
        reconstruct_s: list[float] = []
        try:
            for _ in range(iterations):
                t0 = time.perf_counter()
                response = await stub.Compress(request, timeout=3600)
                compress_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                rebuilt = await stub.Reconstruct(
                    pb.ReconstructRequest(envelope=response.envelope), timeout=3600
                )
                reconstruct_s.append(time.perf_counter() - t0)
        except grpc.aio.AioRpcError as err:
            failures.append(
                {"id": row["id"], "code": err.code().name, "details": err.details() or ""}
            )
            continue
        stats = response.stats
        results.append(
            ItemResult(
                id=row["id"],
                bucket=bucket_of(len(data), edges),
                original_bytes=len(data),
                envelope_bytes=len(response.envelope),
                ratio=len(data) / len(response.envelope),
                server_ratio=stats.ratio,
                compress_seconds=compress_s,
                reconstruct_seconds=reconstruct_s,
                exact=rebuilt.text.encode("utf-8") == data,
                server_exact=rebuilt.exact,
                stored_mode=pb.Mode.Name(stats.mode).removeprefix("MODE_").lower(),
                degraded=stats.degraded,
                reason=stats.reason,
                model=stats.model,
                backend=stats.backend,
                compress_stages=[(s.stage, s.seconds) for s in stats.stages],
                reconstruct_stages=[(s.stage, s.seconds) for s in rebuilt.stages],
            )
        )
    return results, failures


async def batch_throughput(
    stub: pb_grpc.CompressionServiceStub, mode: str, passages: list[dict[str, str]]
) -> dict[str, float]:
    """Items/min through one BatchCompress stream (the way corpora are meant to be sent)."""

    async def requests() -> Any:
        for i, row in enumerate(passages):
            req = pb.CompressRequest(text=row["text"], mode=MODES[mode], skip_cache=True)
            yield pb.BatchCompressRequest(id=str(i), request=req)

    t0 = time.perf_counter()
    answered: set[str] = set()
    errors = 0
    async for reply in stub.BatchCompress(requests(), timeout=3600):
        answered.add(reply.id)
        errors += reply.WhichOneof("outcome") == "error"
    elapsed = time.perf_counter() - t0
    if len(answered) != len(passages):
        raise RuntimeError(f"BatchCompress answered {len(answered)} of {len(passages)} ids")
    return {
        "items": len(passages),
        "errors": errors,
        "seconds": elapsed,
        "items_per_min": 60 * len(passages) / elapsed,
    }


def _dist(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return {
        "min": float(arr.min()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "max": float(arr.max()),
    }


def _latency(values: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


def summarize(items: list[ItemResult]) -> dict[str, Any]:
    """Ratio distribution, latency percentiles, throughput and exactness of a group."""
    compress = [s for it in items for s in it.compress_seconds]
    reconstruct = [s for it in items for s in it.reconstruct_seconds]
    original = sum(it.original_bytes for it in items)
    iterations = len(compress) / len(items)
    return {
        "n": len(items),
        "original_bytes": original,
        "envelope_bytes": sum(it.envelope_bytes for it in items),
        # Whole group as one: what a corpus of these texts shrinks by.
        "aggregate_ratio": original / sum(it.envelope_bytes for it in items),
        "ratio": _dist([it.ratio for it in items]),
        "compress_seconds": _latency(compress),
        "reconstruct_seconds": _latency(reconstruct),
        # Sequential unary calls: one client, one item at a time.
        "items_per_min": 60 * len(compress) / sum(compress),
        "compress_bytes_per_s": original * iterations / sum(compress),
        "reconstruct_bytes_per_s": original * iterations / sum(reconstruct),
        "exact": sum(it.exact for it in items),
        "degraded": sum(it.degraded for it in items),
    }


def stage_summary(items: list[ItemResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Per stage p50/p95 seconds, for compress and reconstruct, from the server's timings."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for side in ("compress", "reconstruct"):
        by_stage: dict[str, list[float]] = {}
        for it in items:
            for stage, seconds in getattr(it, f"{side}_stages"):
                by_stage.setdefault(stage, []).append(seconds)
        out[side] = {stage: _latency(v) for stage, v in by_stage.items()}
    return out


def group_key(item: ItemResult | dict[str, Any]) -> str:
    """ "backend model" as the server reported them ("" for ZSTD, which uses no model)."""
    backend, model = (
        (item["backend"], item["model"]) if isinstance(item, dict) else (item.backend, item.model)
    )
    return f"{backend} {model}".strip()


def group_results(items: list[ItemResult], edges: list[int]) -> dict[str, Any]:
    """Summaries per backend/model the server reported, each overall and per size bucket."""
    groups: dict[str, list[ItemResult]] = {}
    for it in items:
        groups.setdefault(group_key(it), []).append(it)
    out: dict[str, Any] = {}
    for key, members in groups.items():
        buckets = {}
        for label in bucket_labels(edges):
            chosen = [it for it in members if it.bucket == label]
            if chosen:
                buckets[label] = summarize(chosen)
        out[key] = {
            "all": summarize(members),
            "buckets": buckets,
            "stages": stage_summary(members),
        }
    return out


def as_json(items: list[ItemResult]) -> list[dict[str, Any]]:
    return [asdict(it) for it in items]
