"""The gRPC servicer: protobuf <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmcompress_proto.v1 import compression_pb2 as pb
from llmcompress_proto.v1 import compression_pb2_grpc as pb_grpc

from ..core.deadline import deadline_scope
from ..core.domain import CompressCommand
from ..core.errors import PreconditionFailed
from ..flow.batch import BatchRunner
from ..flow.cache import TierStats
from ..flow.dictionaries import DictionaryStore, StoredDictionary, read_training
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

    @property
    def _dictionaries(self) -> DictionaryStore:
        store = self.pipeline.dictionaries
        if store is None:
            raise PreconditionFailed("this server keeps no corpus dictionaries")
        return store

    async def TrainDictionary(
        self,
        request_iterator: AsyncIterator[pb.TrainDictionaryRequest],
        context: grpc.aio.ServicerContext[pb.TrainDictionaryRequest, pb.TrainDictionaryResponse],
    ) -> pb.TrainDictionaryResponse:
        store = self._dictionaries
        name, size, samples = await read_training(request_iterator, store)
        stored = await store.train(name, samples, size)
        return pb.TrainDictionaryResponse(dictionary=_info_pb(stored, [name]))

    async def ImportDictionary(
        self,
        request: pb.ImportDictionaryRequest,
        context: grpc.aio.ServicerContext[pb.ImportDictionaryRequest, pb.ImportDictionaryResponse],
    ) -> pb.ImportDictionaryResponse:
        stored = await self._dictionaries.import_file(request.file, request.name)
        return pb.ImportDictionaryResponse(dictionary=_info_pb(stored, [stored.name]))

    async def ExportDictionary(
        self,
        request: pb.ExportDictionaryRequest,
        context: grpc.aio.ServicerContext[pb.ExportDictionaryRequest, pb.ExportDictionaryResponse],
    ) -> pb.ExportDictionaryResponse:
        stored = await self._dictionaries.find(request.dictionary)
        return pb.ExportDictionaryResponse(file=stored.to_file(), info=_info_pb(stored, []))

    async def ListDictionaries(
        self,
        request: pb.ListDictionariesRequest,
        context: grpc.aio.ServicerContext[pb.ListDictionariesRequest, pb.ListDictionariesResponse],
    ) -> pb.ListDictionariesResponse:
        listing = await self._dictionaries.listing()
        return pb.ListDictionariesResponse(dictionaries=[_info_pb(s, n) for s, n in listing])

    async def DeleteDictionary(
        self,
        request: pb.DeleteDictionaryRequest,
        context: grpc.aio.ServicerContext[pb.DeleteDictionaryRequest, pb.DeleteDictionaryResponse],
    ) -> pb.DeleteDictionaryResponse:
        stored, names = await self._dictionaries.delete(request.dictionary)
        return pb.DeleteDictionaryResponse(deleted=_info_pb(stored, names))

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


def _info_pb(stored: StoredDictionary, names: list[str]) -> pb.DictionaryInfo:
    d = stored.dictionary
    return pb.DictionaryInfo(
        name=stored.name,
        id=d.hex,
        zstd_bytes=len(d.zstd),
        primer_bytes=len(d.primer.encode("utf-8")),
        samples=stored.samples,
        sample_bytes=stored.sample_bytes,
        created_unix=stored.created_unix,
        training_seconds=stored.training_seconds,
        names=names,
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
