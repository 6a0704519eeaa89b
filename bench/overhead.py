"""Service overhead against the simulated Ollama (fixed latency, N slots): BatchCompress
throughput as a fraction of the Little's-law ideal, and what the service adds per call.

The backend's own time is known exactly (the simulator sleeps `latency` per call), so
everything else the server spends is overhead: ours, grpc's and the HTTP client's.
The batch's client is a process of its own (bench.batch_load), as a user's is, so
the server's event loop and CPU are the server's alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import create_server
from llmcompress_server.backends import ChatRequest
from llmcompress_server.backends.ollama import OllamaEndpoint
from llmcompress_server.codecs.semantic.summarize import summary_messages, summary_schema
from llmcompress_server.core.config import OllamaConfig, load_config
from llmcompress_server.core.events import ModelCallEnded, NullSink

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR = "tests.sim_ollama"
LOAD_DRIVER = "bench.batch_load"
NOT_ON_BUILD = "section not available on this build (tests/sim_ollama.py is missing)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"{SIMULATOR} exited with status {proc.returncode} at start")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{SIMULATOR} did not listen on port {port} within {limit:.0f}s")


def simulator_overrides(
    port: int, slots: int, sections: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Config overrides for an in-process server on the simulated Ollama at `port` (in-flight
    limit = slots, no cache, no Prometheus); each of `sections` is merged over them."""
    overrides: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 2},
        "monitoring": {"enable_prometheus": False},
        "model": {
            "backend": "ollama",
            "ollama_endpoint": f"http://127.0.0.1:{port}",
            "embedded": {"preload": False},
        },
        "performance": {"max_concurrent": slots},
        # The seed's llm.rate_limit (60/min) is a user policy; left on, it alone
        # would set the pace and the section would measure the token bucket.
        "llm": {"rate_limit": 0},
        "cache": {"enabled": False},
    }
    for section, values in (sections or {}).items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return overrides


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


async def service_overhead(
    passages: list[dict[str, str]],
    *,
    items: int,
    sequential: int = 20,
    slots: int = 8,
    latency: float = 0.05,
    config_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run SEMANTIC through an in-process server whose backend is the simulated Ollama.

    `config_overrides` are merged over the default wiring (model.backend=ollama at the
    simulator's address, in-flight limit = slots), for backends configured differently.
    """
    if importlib.util.find_spec(SIMULATOR) is None:
        return {"available": False, "reason": NOT_ON_BUILD}
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SIMULATOR,
        "--port",
        str(port),
        "--slots",
        str(slots),
        "--latency",
        str(latency),
        cwd=ROOT,
    )
    overrides = simulator_overrides(port, slots, config_overrides or {})
    watch = _Watch()
    app = None
    try:
        await _wait_listening(port, proc, 15.0)
        app = await create_server(load_config(environ={}, overrides=overrides), sinks=[watch])
        await app.start()
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            why_not = await _semantic_missing(stub)
            if why_not:
                return {"available": False, "reason": why_not}
            result = {
                "available": True,
                "slots": slots,
                "latency_s": latency,
                **await _sequential(stub, passages[:sequential], watch.calls, latency),
                **await _batch(app.address, passages, items, watch, slots, latency),
            }
        result.update(await _endpoint_ceiling(port, passages, slots, latency, items // 2))
        if result.get("fraction_of_ideal") and result.get("endpoint_only_fraction_of_ideal"):
            result["fraction_of_endpoint_only"] = (
                result["fraction_of_ideal"] / result["endpoint_only_fraction_of_ideal"]
            )
        return result
    finally:
        if app is not None:
            await app.stop(grace=0)
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _endpoint_ceiling(
    port: int, passages: list[dict[str, str]], slots: int, latency: float, calls: int
) -> dict[str, Any]:
    """The harness's own ceiling: the server's Ollama client alone, `slots` calls at a
    time against the same simulator, no gRPC and no SEMANTIC work. Whatever this
    misses of the ideal is the client's and the simulator's per-call time on this
    machine, which no server change can win back."""
    endpoint = OllamaEndpoint(f"http://127.0.0.1:{port}", max_connections=slots, stream=False)
    model = OllamaConfig().models.standard
    requests = [
        ChatRequest(
            messages=summary_messages(row["text"], 40),
            max_tokens=100,
            temperature=0.0,
            seed=0,
            json_schema=summary_schema(300),
        )
        for row in passages[:64]
    ]

    async def worker(k: int) -> None:
        for i in range(k, calls, slots):
            await endpoint.chat(requests[i % len(requests)], model)

    try:
        await endpoint.chat(requests[0], model)  # connect outside the timing
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(slots)))
        elapsed = time.perf_counter() - t0
    finally:
        await endpoint.close()
    ideal = slots / latency
    return {
        "endpoint_only_calls": calls,
        "endpoint_only_calls_per_s": calls / elapsed,
        "endpoint_only_fraction_of_ideal": calls / elapsed / ideal,
    }


async def _semantic_missing(stub: pb_grpc.CompressionServiceStub) -> str:
    """Why SEMANTIC (the mode that calls the backend) is not offered, or ""."""
    probe = pb.CompressRequest(text="A probe.", mode=pb.MODE_SEMANTIC, skip_cache=True)
    try:
        await stub.Compress(probe, timeout=60)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return f"SEMANTIC is not offered: {err.details()}"
        raise
    return ""


class _Watch(NullSink):
    """The server's model-call durations, and (while `own_seconds` is a dict) each stage's
    own time (nested stages excluded), summed."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.own_seconds: dict[str, float] | None = None

    def model_called(self, call: ModelCallEnded) -> None:
        self.calls.append(call.seconds)

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        if self.own_seconds is not None:
            self.own_seconds[stage] = self.own_seconds.get(stage, 0.0) + self_seconds


async def _sequential(
    stub: pb_grpc.CompressionServiceStub,
    passages: list[dict[str, str]],
    calls: list[float],
    latency: float,
) -> dict[str, Any]:
    """One item at a time, so each item's backend calls are known: overhead = total - backend."""
    per_item: list[float] = []
    per_call: list[float] = []
    degraded = 0
    for row in passages:
        calls.clear()
        request = pb.CompressRequest(text=row["text"], mode=pb.MODE_SEMANTIC, skip_cache=True)
        response = await stub.Compress(request, timeout=60)
        degraded += response.stats.degraded
        per_item.append(response.stats.total_seconds - sum(calls))
        per_call.extend(seconds - latency for seconds in calls)
    return {
        "sequential_items": len(passages),
        "sequential_degraded": degraded,
        "overhead_per_item_s": _pct(per_item),
        "overhead_per_backend_call_s": _pct(per_call),
    }


async def _batch(
    address: str,
    passages: list[dict[str, str]],
    items: int,
    watch: _Watch,
    slots: int,
    latency: float,
) -> dict[str, Any]:
    """One BatchCompress stream of `items` items (passages reused in turn), sent and
    read by bench.batch_load in a process of its own, as a user's client would be."""
    calls = watch.calls
    calls.clear()
    own = watch.own_seconds = {}
    cpu0, loop_cpu0 = time.process_time(), time.thread_time()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            LOAD_DRIVER,
            address,
            str(items),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        texts = json.dumps([row["text"] for row in passages]).encode("utf-8")
        out, _ = await proc.communicate(texts)
    finally:
        watch.own_seconds = None
    server_cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop_cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{LOAD_DRIVER} exited with status {proc.returncode}")
    load = json.loads(out.decode("utf-8").strip().splitlines()[-1])
    elapsed = load["seconds"]
    calls_per_item = len(calls) / items
    # Little's law: `slots` calls in flight, each `latency` long. No backend calls
    # (every item degraded to ZSTD, say) leaves no ideal to compare with.
    ideal = slots / latency / calls_per_item if calls_per_item else None
    return {
        "batch_driver": "a separate client process (bench.batch_load)",
        "batch_items": items,
        "batch_answered": load["distinct_ids"],
        "batch_answers": load["answers"],
        "batch_errors": load["errors"],
        "batch_degraded": load["degraded"],
        "batch_seconds": elapsed,
        "backend_calls": len(calls),
        "backend_calls_per_item": calls_per_item,
        "items_per_s": items / elapsed,
        "ideal_items_per_s": ideal,
        "fraction_of_ideal": items / elapsed / ideal if ideal else None,
        # CPU of the server's process (simulator and client excluded) per item, and of
        # its event-loop thread alone: 1 / the latter bounds items/s on one free core.
        "server_cpu_per_item_s": server_cpu / items,
        "server_loop_cpu_per_item_s": loop_cpu / items,
        "client_cpu_per_item_s": load["client_cpu_seconds"] / items,
        "stage_self_per_item_s": {
            stage: total / items for stage, total in sorted(own.items(), key=lambda kv: -kv[1])
        },
    }
