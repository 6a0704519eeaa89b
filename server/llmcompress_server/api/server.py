"""Server assembly: `create_server(config)` builds everything; `serve` runs it until a signal.

Keeping the factory apart from `main()` lets tests bind 127.0.0.1:0 and run
the real server in-process.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmcompress_proto.v1 import compression_pb2 as pb
from llmcompress_proto.v1 import compression_pb2_grpc as pb_grpc

from ..backends import TextBackend
from ..backends.embedded import EmbeddedEngine
from ..backends.router import BackendRouter, build_text_backend
from ..codecs import Codec
from ..codecs.lossless import LosslessCodec
from ..codecs.semantic import SemanticCodec
from ..codecs.zstd import ZstdCodec
from ..core.config import Config, ShortTextStore
from ..core.domain import Mode
from ..core.events import Events, EventSink
from ..flow.batch import BatchRunner
from ..flow.dictionaries import DictionaryStore
from ..flow.pipeline import Pipeline
from ..telemetry import Telemetry, setup_telemetry, tracing_interceptor
from ..telemetry.bottleneck import StageWindow
from ..telemetry.cost import Pricing, UsageLedger
from .auth import build_auth
from .interceptors import ErrorInterceptor
from .request_metrics import RequestMetricsInterceptor
from .service import CompressionServicer
from .tls import server_credentials

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompressionService"].full_name


@dataclass
class App:
    """A built server and the parts tests and `main` need to reach."""

    config: Config
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    pipeline: Pipeline
    stages: StageWindow
    usage: UsageLedger
    engine: EmbeddedEngine | None = None
    # What model-backed codecs call: the engine, or a router over Ollama/OpenAI pools.
    backend: TextBackend | None = None
    # Runs this server's BatchCompress streams.
    batch: BatchRunner | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _unregister: list[Callable[[], None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        if self.engine is not None and self.config.model.embedded.preload:
            self._tasks.append(asyncio.create_task(self._preload(self.engine)))
        log.info("llmcompress serving on %s", self.address)

    @staticmethod
    async def _preload(engine: EmbeddedEngine) -> None:
        try:
            await engine.start()
        except Exception as exc:  # ZSTD still works without the model
            log.error("embedded model failed to load: %s", exc)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: health NOT_SERVING first, then in-flight calls get `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.server.grace_seconds if grace is None else grace)
        for task in self._tasks:
            task.cancel()
        for unregister in self._unregister:
            unregister()
        await self.pipeline.close()
        if self.backend is not None and self.backend is not self.engine:
            await self.backend.close()
        if self.engine is not None:
            await self.engine.close()


def build_codecs(
    config: Config, engine: EmbeddedEngine | None, backend: TextBackend | None = None
) -> dict[Mode, Codec]:
    """LOSSLESS needs the embedded engine (token-level access); SEMANTIC any chat backend,
    and codes its bodies with the LOSSLESS codec where configured."""
    comp = config.compression
    zstd = ZstdCodec(
        comp.zstd_level,
        comp.zstd_small_level,
        comp.zstd_small_bytes,
        comp.zstd_dictionary_small_level,
    )
    codecs: dict[Mode, Codec] = {Mode.ZSTD: zstd}
    lossless = LosslessCodec(engine) if engine is not None else None
    if lossless is not None:
        codecs[Mode.LOSSLESS] = lossless
    if backend is not None:
        local = engine is not None and backend is engine
        codecs[Mode.SEMANTIC] = SemanticCodec(backend, config, lossless=lossless, local=local)
    return codecs


def short_text_store(
    config: Config, engine: EmbeddedEngine | None, backend: TextBackend | None
) -> Mode:
    """Where SEMANTIC stores a text too short for its target (`compression.short_text_store`)."""
    choice = config.compression.short_text_store
    if choice is ShortTextStore.AUTO:
        # Behind a remote model, LOSSLESS on this CPU would be the batch's slowest step.
        return Mode.LOSSLESS if engine is not None and backend is engine else Mode.ZSTD
    return Mode(choice.value)


async def create_server(
    config: Config, telemetry: Telemetry | None = None, sinks: Sequence[EventSink] = ()
) -> App:
    """Build (not start) the server bound to config.server.host:port (port 0: any free one).

    Without `telemetry`, server spans still go to the global tracer provider.
    Everything this server reports goes to its own `Events`: its stage window,
    its usage ledger, `telemetry.metrics`, and any other `sinks` given; never to
    another server's.
    """
    stages = StageWindow()
    usage = UsageLedger(Pricing.from_config(config.cost))
    every: list[EventSink] = [stages, usage, *sinks]
    if telemetry is not None:
        every.append(telemetry.metrics)
    events = Events(every, telemetry.tracer if telemetry is not None else None)
    engine = EmbeddedEngine(config.model.embedded, events)
    backend = build_text_backend(config, engine, events=events)
    codecs = build_codecs(config, engine, backend)
    lossless = codecs.get(Mode.LOSSLESS)
    dictionaries = DictionaryStore(
        config.dictionaries,
        max_sample_bytes=config.compression.max_text_bytes,
        redis_url=config.cache.redis_url,
        events=events,
        choose_primer=getattr(lossless, "choose_primer", None),
    )
    pipeline = Pipeline(
        config,
        codecs,
        events=events,
        short_store=short_text_store(config, engine, backend),
        dictionaries=dictionaries,
    )
    window = config.performance.batch_window
    batch = BatchRunner(
        functools.partial(pipeline.compress, wait=True),
        window,
        events.tracer,
        group_threshold=config.compression.group_similar_threshold,
        default_mode=config.compression.default_mode,
        compress_now=pipeline.compress_now,
    )
    servicer = CompressionServicer(pipeline, batch, stages, usage)

    limit = config.security.max_message_bytes
    auth = build_auth(config.security)
    credentials = server_credentials(config.security)
    # Tracing outermost, its span covering everything; auth right inside it, so a refused call
    # is traced but never reaches the pipeline; the request metrics inside the error
    # interceptor, so they see domain exceptions before those become statuses.
    interceptors = [
        tracing_interceptor(telemetry.tracer_provider if telemetry else None),
        *([auth] if auth else []),
        ErrorInterceptor(),
        *(
            [RequestMetricsInterceptor(telemetry.metrics, telemetry.monitoring)]
            if telemetry
            else []
        ),
    ]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this a second server on the same port binds silently and
            # steals half the connections.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_CompressionServiceServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{config.server.host}:{config.server.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc >= 1.60 raises instead of returning 0
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}: in use, or not an address of this host")
    app = App(
        config, server, port, health_servicer, pipeline, stages, usage, engine, backend, batch
    )
    if telemetry is not None:
        metrics = telemetry.metrics
        app._unregister.append(
            metrics.watch_queue(
                lambda: [
                    ("admission", pipeline.admission.active),
                    ("embedded", engine.queue_depth),
                    ("coding", engine.coding_queue_depth),
                ]
            )
        )
        app._unregister.append(metrics.watch_coding(engine.coding_counters))
        if isinstance(backend, BackendRouter):  # per-endpoint gauges of the Ollama/OpenAI pools
            for route in backend.routes:
                app._unregister.append(
                    metrics.watch_backends(route.pool.inflight, route.pool.health)
                )
    return app


async def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    telemetry = setup_telemetry(config)
    try:
        app = await create_server(config, telemetry)
        await app.start()
        # The objects built by now (modules, protos, config, codecs: ~100,000 in a ZSTD
        # server) live as long as the process: kept out of the collector's full passes,
        # which otherwise walk them all again as cache entries pile up (with every
        # streamed item cached, 3 µs of a short ZSTD item's 41 in process).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: health NOT_SERVING, %.0fs grace", config.server.grace_seconds)
        await app.stop()
        log.info("stopped")
    finally:
        telemetry.shutdown()
