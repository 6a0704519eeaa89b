"""Backend pool gauges and error counts against the simulated Ollama, read through OTel.

`llmc_backend_inflight` follows the calls holding a slot and returns to 0;
`llmc_backend_up` drops to 0 on a failing health probe and when the breaker
opens; every failed attempt is counted once in `llmc_backend_errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from llmcompress_server.api.server import App, create_server
from llmcompress_server.backends import ChatRequest
from llmcompress_server.backends.router import BackendRouter
from llmcompress_server.core.errors import BackendUnavailable
from llmcompress_server.telemetry import setup_telemetry
from tests.conftest import SimFactory, make_config, metric_values
from tests.sim_ollama import SimOllama, SimOptions

HELLO = ChatRequest(messages=[{"role": "user", "content": "hello there general kenobi"}])


def _by_endpoint(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    return {dict(k)["endpoint"]: v for k, v in metric_values(reader, name).items()}


def _errors(reader: InMemoryMetricReader) -> dict[str, int]:
    return {dict(k)["kind"]: v for k, v in metric_values(reader, "llmc_backend_errors").items()}


class Served:
    def __init__(self, app: App, reader: InMemoryMetricReader, sim: SimOllama) -> None:
        self.app, self.reader, self.sim = app, reader, sim

    @property
    def router(self) -> BackendRouter:
        assert isinstance(self.app.backend, BackendRouter)
        return self.app.backend


@pytest.fixture
async def served(sim_ollama: SimFactory) -> AsyncIterator[Served]:
    sim = await sim_ollama(slots=4, latency=0.3)
    config = make_config(
        model={"backend": "ollama", "ollama": {"endpoints": [sim.url]}},
        performance={"max_concurrent": 4},
        # Probes only when the test asks; two failures open the breaker; no retries,
        # so every attempt the test makes is one the sim (or the refused socket) sees.
        llm={
            "health_interval": 0,
            "breaker_failures": 2,
            "cooldown": 600,
            "max_retries": 0,
            "timeout": 1.0,
            "fallback_embedded": False,
        },
    )
    reader = InMemoryMetricReader()
    provider = TracerProvider()
    telemetry = setup_telemetry(
        config, tracer_provider=provider, metric_readers=[reader], environ={}
    )
    app = await create_server(config, telemetry)
    await app.start()
    try:
        yield Served(app, reader, sim)
    finally:
        await app.stop(grace=0)
        telemetry.shutdown()
        provider.shutdown()


async def test_inflight_follows_calls_and_returns_to_zero(served: Served) -> None:
    url = served.sim.url
    assert _by_endpoint(served.reader, "llmc_backend_inflight") == {url: 0}
    assert _by_endpoint(served.reader, "llmc_backend_up") == {url: 1}
    calls = [asyncio.create_task(served.router.chat(HELLO)) for _ in range(3)]
    for _ in range(200):
        if served.sim.stats.running == 3:
            break
        await asyncio.sleep(0.01)
    assert served.sim.stats.running == 3
    assert _by_endpoint(served.reader, "llmc_backend_inflight") == {url: 3}
    results = await asyncio.gather(*calls)
    assert all(r.endpoint == url for r in results)
    assert _by_endpoint(served.reader, "llmc_backend_inflight") == {url: 0}
    assert _by_endpoint(served.reader, "llmc_backend_up") == {url: 1}
    assert _errors(served.reader) == {}


async def test_pool_timeout_counts_once_as_timeout(served: Served) -> None:
    served.sim.options.script = ["hang"]
    # The hung call times out (1 s); the router's next tier model answers.
    result = await served.router.chat(HELLO)
    assert result.endpoint == served.sim.url
    # Not also as a CancelledError from inside the model call's span.
    assert _errors(served.reader) == {"BackendTimeout": 1}
    assert _by_endpoint(served.reader, "llmc_backend_inflight") == {served.sim.url: 0}


async def test_up_drops_on_failed_probe_and_open_breaker(served: Served) -> None:
    url, port = served.sim.url, served.sim.port
    (route,) = served.router.routes
    await served.sim.close()
    states = await route.pool.probe()
    assert states[url].startswith("unhealthy")
    # One failed probe: the breaker is still closed, but the endpoint is not healthy.
    assert _by_endpoint(served.reader, "llmc_backend_up") == {url: 0}
    assert _errors(served.reader) == {"health_probe": 1}
    errors = metric_values(served.reader, "llmc_backend_errors")
    assert {dict(k)["server.address"] for k in errors} == {"127.0.0.1"}

    back = await SimOllama(SimOptions(latency=0.01)).start(port)
    try:
        assert (await route.pool.probe())[url] == "ok"
        assert _by_endpoint(served.reader, "llmc_backend_up") == {url: 1}
    finally:
        await back.close()

    # Down for model calls: two refused attempts open the breaker, the third tier
    # model is not even tried. Each attempt is counted once, by the model call.
    with pytest.raises(BackendUnavailable, match="cooling down"):
        await served.router.chat(HELLO)
    assert _by_endpoint(served.reader, "llmc_backend_up") == {url: 0}
    assert _errors(served.reader) == {"health_probe": 1, "BackendUnavailable": 2}
    assert _by_endpoint(served.reader, "llmc_backend_inflight") == {url: 0}


async def test_gauges_unregister_when_the_app_stops(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama()
    config = make_config(model={"backend": "ollama", "ollama": {"endpoints": [sim.url]}})
    reader = InMemoryMetricReader()
    provider = TracerProvider()
    telemetry = setup_telemetry(
        config, tracer_provider=provider, metric_readers=[reader], environ={}
    )
    try:
        app = await create_server(config, telemetry)
        assert _by_endpoint(reader, "llmc_backend_up") == {sim.url: 1}
        await app.stop(grace=0)
        assert _by_endpoint(reader, "llmc_backend_up") == {}
        assert _by_endpoint(reader, "llmc_backend_inflight") == {}
    finally:
        telemetry.shutdown()
        provider.shutdown()
