"""The gRPC servicer: protobuf <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmcompress_proto.v1 import compression_pb2 as pb
from llmcompress_proto.v1 import compression_pb2_grpc as pb_grpc

from ..core.deadline import deadline_scope
from ..core.domain import CompressCommand
from ..flow.batch import BatchRunner
from ..flow.cache import TierStats
from ..flow.pipeline import Pipeline
from ..telemetry.bottleneck import StageWindow
from ..telemetry.cost import UsageLedger


class CompressionServicer(pb_grpc.CompressionServiceServicer):
    """CompressionService: each RPC converts its request, calls the pipeline (or the batch
    runner, or the stage window, cache and usage ledger for GetStats) and converts the answer."""

    def __init__(
        self, pipeline: Pipeline, batch: BatchRunner, stages: StageWindow, usage: UsageLedger
    ) -> None:
        self.pipeline = pipeline
        self.batch = batch
        self.stages = stages
        self.usage = usage

    async def Compress(
        self,
        request: pb.CompressRequest,
        context: grpc.aio.ServicerContext[pb.CompressRequest, pb.CompressResponse],
    ) -> pb.CompressResponse:
        with deadline_scope(context.time_remaining()):
            outcome = await self.pipeline.compress(CompressCommand.from_pb(request))
        return outcome.to_pb()

    async def Reconstruct(
        self,
        request: pb.ReconstructRequest,
        context: grpc.aio.ServicerContext[pb.ReconstructRequest, pb.ReconstructResponse],
    ) -> pb.ReconstructResponse:
        with deadline_scope(context.time_remaining()):
            outcome = await self.pipeline.reconstruct(request.envelope)
        return outcome.to_pb()

    async def BatchCompress(
        self,
        request_iterator: AsyncIterator[pb.BatchCompressRequest],
        context: grpc.aio.ServicerContext[pb.BatchCompressRequest, pb.BatchCompressResponse],
    ) -> AsyncIterator[pb.BatchCompressResponse]:
        async for response in self.batch.run(request_iterator, context.time_remaining()):
            yield response

    async def GetStats(
        self,
        request: pb.GetStatsRequest,
        context: grpc.aio.ServicerContext[pb.GetStatsRequest, pb.GetStatsResponse],
    ) -> pb.GetStatsResponse:
        window = request.window_seconds or self.stages.window_seconds
        summaries = self.stages.summary(window)
        cache = self.pipeline.cache
        usage = self.usage.usage()
        cost = self.usage.summary(usage)
        return pb.GetStatsResponse(
            stages=[
                pb.StageStats(
                    stage=s.stage,
                    count=s.count,
                    p50=s.p50,
                    p95=s.p95,
                    p99=s.p99,
                    total_seconds=s.total,
                    self_p95=s.self_p95,
                )
                for s in summaries
            ],
            slowest_stage=StageWindow.slowest(summaries),
            cache=[_tier_pb(t) for t in cache.tier_stats()] if cache is not None else [],
            window_seconds=window,
            usage=usage,
            cost=cost.cost,
            cost_reference=cost.reference,
            reference_cost=cost.reference_cost,
            cost_saving=cost.saving,
        )


def _tier_pb(tier: TierStats) -> pb.CacheTierStats:
    return pb.CacheTierStats(
        tier=tier.tier,
        hits=tier.hits,
        misses=tier.misses,
        hit_ratio=tier.hit_ratio,
        avg_lookup_seconds=tier.avg_lookup_seconds,
        available=tier.available,
        size=tier.size,
        max_size=tier.max_size,
        bytes=tier.bytes,
        max_bytes=tier.max_bytes,
        errors=tier.errors,
    )
