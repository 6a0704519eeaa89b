"""Every catalog row against one real server: the exact status, then a normal round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.api.server import App, create_server

from ..conftest import RedisServer, make_config, semantic_config
from ..sim_ollama import SimOllama, SimOptions
from .catalog import (
    BACKEND_CASES,
    BACKEND_RETRIES,
    BACKEND_TIMEOUT,
    CASES,
    MAX_MESSAGE,
    MAX_QUEUE,
    MAX_TEXT,
    SAMPLE,
    BackendCaller,
    BackendCase,
    Caller,
    Case,
)

TOKEN = "reliability-token"


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
async def catalog_server(tokens_file: Path) -> AsyncIterator[App]:
    tokens = tokens_file
    config = make_config(
        compression={"max_text_bytes": MAX_TEXT},
        performance={"max_queue": MAX_QUEUE},
        security={"max_message_bytes": MAX_MESSAGE, "tokens_file": str(tokens)},
    )
    app = await create_server(config)
    await app.start()
    yield app
    await app.stop(grace=0)


@pytest.fixture
async def caller(catalog_server: App) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(catalog_server.address) as channel:
        yield Caller(catalog_server, channel, (("authorization", f"Bearer {TOKEN}"),))


def test_catalog_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_case(case: Case, caller: Caller) -> None:
    code = await case.run(caller)
    assert code == case.expect, f"{case.name}: got {code.name}, want {case.expect.name}"
    # ... and the server keeps serving: a fresh channel, a normal round trip.
    async with grpc.aio.insecure_channel(caller.app.address) as channel:
        after = Caller(caller.app, channel, caller.metadata)
        resp = await after.compress(SAMPLE)
        back = await after.reconstruct(resp.envelope)
    assert back.text == SAMPLE and back.exact
    assert caller.app.pipeline.admission.active == 0


# -- the model backend and Redis ---------------------------------------------------------


@pytest.fixture(scope="module")
async def backend_sim() -> AsyncIterator[SimOllama]:
    sim = await SimOllama(SimOptions(latency=0.01, slots=4)).start()
    yield sim
    await sim.close()


@pytest.fixture(scope="module")
async def backend_servers(backend_sim: SimOllama) -> AsyncIterator[dict[tuple[bool, bool], App]]:
    """One server per (llm.allow_degraded, model.ollama.stream), all on the one simulated Ollama."""
    apps: dict[tuple[bool, bool], App] = {}
    for degraded in (False, True):
        for stream in (False, True):
            config = semantic_config(
                backend_sim.url,
                allow_degraded=degraded,
                max_retries=BACKEND_RETRIES,
                timeout=BACKEND_TIMEOUT,
                breaker_failures=1000,
                cooldown=0,
            )
            ollama = config.model.ollama.model_copy(update={"stream": stream})
            config = config.model_copy(
                update={
                    "cache": config.cache.model_copy(update={"enabled": False}),
                    "model": config.model.model_copy(update={"ollama": ollama}),
                }
            )
            apps[degraded, stream] = app = await create_server(config)
            await app.start()
    yield apps
    for app in apps.values():
        await app.stop(grace=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("allow_degraded", [False, True], ids=["strict", "allow_degraded"])
@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c.name for c in BACKEND_CASES])
async def test_backend_case(
    case: BackendCase,
    allow_degraded: bool,
    backend_sim: SimOllama,
    backend_servers: dict[tuple[bool, bool], App],
) -> None:
    app = backend_servers[allow_degraded, case.stream]
    async with grpc.aio.insecure_channel(app.address) as channel:
        c = BackendCaller(app, channel, backend_sim, allow_degraded)
        undo = await case.fault(c)
        try:
            got = await c.semantic()
        finally:
            backend_sim.options.script = []
            if undo is not None:
                await undo()
        if allow_degraded:
            assert isinstance(got, pb.CompressResponse), f"{case.name}: {got}"
            assert got.stats.degraded and got.stats.mode == pb.MODE_ZSTD, got.stats
            assert got.stats.requested_mode == pb.MODE_SEMANTIC
            assert "no model backend answered" in got.stats.reason, got.stats.reason
            assert case.says in got.stats.reason, got.stats.reason
            back = await c.app.pipeline.reconstruct(got.envelope)
            assert back.text == SAMPLE
        else:
            assert isinstance(got, grpc.aio.AioRpcError), f"{case.name}: {got}"
            assert got.code() == case.expect, f"{case.name}: {got.code()} {got.details()}"
            assert case.says in (got.details() or ""), got.details()
        # ... and once the fault is gone, SEMANTIC is served again, nothing left in flight.
        again = await c.semantic()
        assert isinstance(again, pb.CompressResponse), f"{case.name}: {again}"
        assert again.stats.mode == pb.MODE_SEMANTIC and not again.stats.degraded
    assert app.pipeline.admission.active == 0


@pytest.mark.timeout(60)
async def test_redis_down_serves_from_the_in_process_tier(redis_server: RedisServer) -> None:
    # SAMPLE is a short ZSTD text: cached here, where by default it would not be.
    config = make_config(
        cache={"redis_url": redis_server.url, "redis_timeout": 0.2, "zstd_min_bytes": 0}
    )
    app = await create_server(config)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            caller = Caller(app, channel, ())
            first = await caller.compress(SAMPLE)  # stored in both tiers
            redis_server.kill()
            assert (await caller.compress(SAMPLE)).stats.cache_hit  # memory still answers
            fresh = SAMPLE + " and one more sentence."
            miss = await caller.compress(fresh)  # Redis lookup and store fail: still OK
            assert not miss.stats.cache_hit
            assert (await caller.reconstruct(miss.envelope)).text == fresh
            assert (await caller.reconstruct(first.envelope)).text == SAMPLE
            stats = await caller.stub.GetStats(pb.GetStatsRequest())
        redis = {t.tier: t for t in stats.cache}["redis"]
        assert redis.errors >= 1  # (`available` returns after a backoff: time-dependent)
        assert app.pipeline.admission.active == 0
    finally:
        await app.stop(grace=0)
