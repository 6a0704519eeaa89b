"""A real Prometheus scrapes the service's /metrics; the series are read back through its API."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import create_server
from llmcompress_server.telemetry import Telemetry, setup_telemetry
from tests.conftest import make_config, require_tool

pytestmark = pytest.mark.external

SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: llmcompress
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    config = make_config(monitoring={"enable_prometheus": True, "prometheus_port": 0})
    # Its own tracer provider, so the test leaves the process-global one alone.
    tel = setup_telemetry(config, tracer_provider=TracerProvider(), environ={})
    try:
        yield tel
    finally:
        tel.shutdown()


@pytest.fixture
def prometheus(telemetry: Telemetry, tmp_path: Path) -> Iterator[str]:
    """A Prometheus on a free loopback port scraping the service every second; its base URL."""
    binary = require_tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(SCRAPE_CONFIG.format(port=telemetry.metrics_port), encoding="utf-8")
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
            try:
                if httpx.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus not ready within 30 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _query(client: httpx.AsyncClient, base: str, promql: str) -> list[dict[str, Any]]:
    reply = await client.get(f"{base}/api/v1/query", params={"query": promql})
    reply.raise_for_status()
    body = reply.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _scalar_when(
    client: httpx.AsyncClient, base: str, promql: str, want: float, seconds: float = 20
) -> float:
    """The query's single value, once it equals `want` (scrapes are 1 s apart) or time is up."""
    deadline = time.monotonic() + seconds
    value = float("nan")
    while time.monotonic() < deadline:
        result = await _query(client, base, promql)
        if result:
            value = float(result[0]["value"][1])
            if value == want:
                return value
        await asyncio.sleep(0.5)
    return value


async def test_prometheus_scrapes_latency_and_items(telemetry: Telemetry, prometheus: str) -> None:
    app = await create_server(make_config(), telemetry)
    await app.start()
    http = httpx.AsyncClient(timeout=5)
    channel = grpc.aio.insecure_channel(app.address)
    stub = pb_grpc.CompressionServiceStub(channel)

    async def compress_ok(n: int) -> None:
        for i in range(n):
            text = f"call {i}: the quick brown fox jumps over the lazy dog. " * (20 + i)
            await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for i in range(batch_items):
            yield pb.BatchCompressRequest(id=str(i), request=pb.CompressRequest(text=f"i{i} " * 40))

    first_ok, failed_calls, later_ok, batch_items = 4, 2, 3, 5
    try:
        await compress_ok(first_ok)
        for _ in range(failed_calls):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Compress(pb.CompressRequest(text="x", mode=42))  # type: ignore[arg-type]
        # Let one scrape see the first calls, so the counter visibly grows between scrapes.
        seen = await _scalar_when(
            http, prometheus, "sum(llmc_items_total)", first_ok + failed_calls
        )
        assert seen == first_ok + failed_calls
        await compress_ok(later_ok)
        answers = [r async for r in stub.BatchCompress(requests())]
        assert len(answers) == batch_items

        calls = first_ok + failed_calls + later_ok + batch_items
        assert await _scalar_when(http, prometheus, 'up{job="llmcompress"}', 1) == 1
        assert await _scalar_when(http, prometheus, "sum(llmc_items_total)", calls) == calls
        errors = await _query(http, prometheus, 'sum by (code) (llmc_items_total{outcome="error"})')
        assert [(r["metric"]["code"], float(r["value"][1])) for r in errors] == [
            ("INVALID_ARGUMENT", failed_calls)
        ]
        ok = first_ok + later_ok + batch_items
        count = await _scalar_when(http, prometheus, "sum(compression_latency_seconds_count)", ok)
        assert count == ok
        buckets = await _query(
            http, prometheus, 'compression_latency_seconds_bucket{le="+Inf", mode="zstd"}'
        )
        assert buckets, "no compression_latency_seconds samples"
        stages = await _query(
            http, prometheus, "sum by (stage) (llmc_stage_duration_seconds_count)"
        )
        assert {"validate", "zstd.encode", "pack"} <= {r["metric"]["stage"] for r in stages}
        # The documented throughput_per_minute query.
        throughput = await _query(http, prometheus, "sum(rate(llmc_items_total[1m])) * 60")
        assert throughput and float(throughput[0]["value"][1]) > 0
    finally:
        await channel.close()
        await http.aclose()
        await app.stop(grace=0)
