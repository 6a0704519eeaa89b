"""Request metrics at the gRPC edge: items by outcome and status, request histograms, slow logs.

It sits inside the error interceptor, so it sees domain exceptions before they
become statuses (including a request the servicer refuses before the pipeline
runs), and every BatchCompress item as it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.config import MonitoringConfig
from ..core.errors import status_code_of
from ..telemetry.metrics import Metrics, mode_label
from .interceptors import Handler, HandlerInterceptor, behaviour

slow_log = logging.getLogger("llmcompress_server.slow")

METHOD_PREFIX = "/llmcompress.v1.CompressionService/"
_TEXT_IN_LOG = 500  # characters, only with monitoring.log_text


def _stage_breakdown(timings: Iterable[pb.StageTiming]) -> list[tuple[str, float]]:
    return [(t.stage, round(t.seconds * 1e3, 3)) for t in timings]


class RequestMetricsInterceptor(HandlerInterceptor):
    """Counts items by outcome, records the request histograms, logs slow requests."""

    def __init__(self, metrics: Metrics, monitoring: MonitoringConfig) -> None:
        self.metrics = metrics
        self.monitoring = monitoring

    def wrap(self, method: str, handler: Handler) -> Handler:
        if not method.startswith(METHOD_PREFIX):
            return handler
        rpc = method.removeprefix(METHOD_PREFIX)
        inner = behaviour(handler)
        if rpc in ("Compress", "Reconstruct") and handler.unary_unary is not None:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    if rpc == "Compress":
                        self.metrics.failed(rpc, _code_of(exc, context))
                    raise
                self._answered(rpc, request, response, time.perf_counter() - start)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if rpc == "BatchCompress" and handler.stream_stream is not None:

            async def stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for response in inner(requests, context):
                    if response.HasField("error"):
                        self.metrics.failed(rpc, _CODES.get(response.error.code, _UNKNOWN))
                    else:
                        stats = response.result.stats
                        self.metrics.compressed(rpc, stats)
                        self._maybe_slow(rpc, stats.total_seconds, stats.stages, stats, None)
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _answered(self, rpc: str, request: Any, response: Any, seconds: float) -> None:
        if rpc == "Compress":
            self.metrics.compressed(rpc, response.stats)
            self._maybe_slow(rpc, seconds, response.stats.stages, response.stats, request.text)
        else:
            self.metrics.reconstructed(response, seconds)
            self._maybe_slow(rpc, seconds, response.stages, None, response.text)

    def _maybe_slow(
        self,
        rpc: str,
        seconds: float,
        timings: Iterable[pb.StageTiming],
        stats: pb.Stats | None,
        text: str | None,
    ) -> None:
        threshold_ms = self.monitoring.slow_request_ms
        if threshold_ms <= 0 or seconds * 1e3 <= threshold_ms:
            return
        breakdown = _stage_breakdown(timings)
        extra: dict[str, Any] = {
            "rpc": rpc,
            "elapsed_ms": round(seconds * 1e3, 3),
            "threshold_ms": threshold_ms,
            "stages_ms": breakdown,
        }
        if stats is not None:
            extra.update(
                mode=mode_label(stats.mode),
                model=stats.model,
                backend=stats.backend,
                original_bytes=stats.original_bytes,
                compressed_bytes=stats.compressed_bytes,
            )
        if self.monitoring.log_text and text is not None:
            extra["text"] = text[:_TEXT_IN_LOG]
        parts = ", ".join(f"{name} {ms:.1f} ms" for name, ms in breakdown)
        slow_log.warning(
            "slow %s: %.1f ms (threshold %g ms); stages: %s",
            rpc,
            seconds * 1e3,
            threshold_ms,
            parts or "none recorded",
            extra=extra,
        )


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_UNKNOWN = grpc.StatusCode.UNKNOWN


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else _UNKNOWN
    if not isinstance(exc, Exception):
        return grpc.StatusCode.CANCELLED  # the client went away
    return status_code_of(exc)
