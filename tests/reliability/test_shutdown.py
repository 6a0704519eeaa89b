"""SIGTERM with calls in flight: `llmc serve` as a real process.

In-flight calls finish within server.grace_seconds or end with UNAVAILABLE;
none hangs, new calls are refused, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc

from ..conftest import slow_text
from ..test_serve_process import free_port, serve_process

IN_FLIGHT = 3
# zstd -19 takes 0.12 s for 512 KB of these words on a fast core (AVX-512 EPYC), so 512 KB
# calls could all be done before the signal; at 3 MiB each they are in flight for ~1 s.
TEXT_BYTES = 3 * 1024 * 1024


def _serve(port: int, grace: float) -> subprocess.Popen[str]:
    return serve_process(
        port,
        LLMC_SERVER__GRACE_SECONDS=str(grace),
        LLMC_COMPRESSION__MAX_TEXT_BYTES=str(2 * TEXT_BYTES),
    )


@pytest.fixture
def texts() -> list[str]:
    return [slow_text(TEXT_BYTES, seed=100 + i) for i in range(IN_FLIGHT)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("grace", [30.0, 0.0], ids=["calls-finish", "no-grace"])
async def test_sigterm_with_calls_in_flight(grace: float, texts: list[str]) -> None:
    port = free_port()
    proc = _serve(port, grace)
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            await stub.Compress(pb.CompressRequest(text="warm up", mode=pb.MODE_ZSTD))
            # grpc.aio starts each RPC when the call object is made.
            calls = [
                stub.Compress(pb.CompressRequest(text=t, mode=pb.MODE_ZSTD), timeout=90)
                for t in texts
            ]
            await asyncio.sleep(0.2)  # the requests are on the wire and being compressed
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            outcomes: list[grpc.StatusCode] = []
            for call, text in zip(calls, texts, strict=True):
                try:
                    resp = await call
                    assert resp.stats.original_bytes == len(text.encode())
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code())
            elapsed = time.monotonic() - started
        # A new call after the signal is refused, not queued.
        async with grpc.aio.insecure_channel(address) as late:
            health = health_pb2_grpc.HealthStub(late)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"grace={grace}: outcomes {[c.name for c in outcomes]} in {elapsed:.2f}s")
    assert proc.returncode == 0, out
    assert "shutting down" in out and "stopped" in out
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
    if grace:
        assert outcomes == [grpc.StatusCode.OK] * IN_FLIGHT
        assert elapsed < grace
    else:
        assert grpc.StatusCode.UNAVAILABLE in outcomes
