"""Cache-hit Compress throughput and latency, next to a bare grpc.aio echo server in the same run.

`measure()` returns a dict for the `make bench` harness; `python -m bench.cache`
prints it. The echo server answers the same request and response messages
(a CompressRequest in, a canned cache-hit CompressResponse out) at the same
concurrency, so the ratio isolates what the cache path costs over gRPC itself.
Rounds alternate hit and echo, which keeps a busy machine's noise on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import create_server
from llmcompress_server.core.config import load_config

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "passages.jsonl"
ECHO_METHOD = "/llmcompress.bench.Echo/Call"
TARGET_RATIO = 0.40


def _payload(size: int) -> str:
    """A real corpus passage of about `size` bytes (synthetic text if the corpus is absent)."""
    if CORPUS.is_file():
        texts = [json.loads(line)["text"] for line in CORPUS.read_text("utf-8").splitlines()]
        return min(texts, key=lambda t: abs(len(t.encode()) - size))
    return ("The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[:size]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(
    call: Any, request: pb.CompressRequest, calls: int, concurrency: int
) -> tuple[float, list[float], list[pb.CompressResponse]]:
    """`calls` unary calls from `concurrency` workers; (calls/s, client latencies, responses)."""
    latencies: list[float] = []
    responses: list[pb.CompressResponse] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            resp = await call(request)
            latencies.append(time.perf_counter() - t0)
            responses.append(resp)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start), latencies, responses


def _echo_server(canned: pb.CompressResponse) -> tuple[grpc.aio.Server, int]:
    async def echo(
        request: pb.CompressRequest,
        context: grpc.aio.ServicerContext[pb.CompressRequest, pb.CompressResponse],
    ) -> pb.CompressResponse:
        return canned

    handler = grpc.method_handlers_generic_handler(
        "llmcompress.bench.Echo",
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=pb.CompressRequest.FromString,
                response_serializer=pb.CompressResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    return server, port


async def _measure(
    calls: int, concurrency: int, payload_bytes: int, rounds: int, text: str | None = None
) -> dict[str, Any]:
    config = load_config(
        environ={},
        overrides={
            "server": {"host": "127.0.0.1", "port": 0},
            "monitoring": {"enable_prometheus": False},
            "model": {"embedded": {"preload": False}},
            # A ~2 KB ZSTD text stands in for any cached entry (a hit's path is the same in
            # every mode); by default ZSTD texts under 4 KiB are coded, not cached.
            "cache": {"zstd_min_bytes": 0},
        },
    )
    app = await create_server(config)
    await app.start()
    text = text or _payload(payload_bytes)
    request = pb.CompressRequest(text=text, mode=pb.MODE_ZSTD)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        first = await stub.Compress(request)
        canned = await stub.Compress(request)  # a real hit response: same size on the wire
        if first.stats.cache_hit or not canned.stats.cache_hit:
            raise RuntimeError("the bench server's cache did not behave: no hit on a repeat")
        echo, echo_port = _echo_server(canned)
        await echo.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel:
            echo_call = echo_channel.unary_unary(
                ECHO_METHOD,
                request_serializer=pb.CompressRequest.SerializeToString,
                response_deserializer=pb.CompressResponse.FromString,
            )
            # Warm both paths (connections, code paths) before timing.
            await _drive(stub.Compress, request, 200, concurrency)
            await _drive(echo_call, request, 200, concurrency)
            hit_rates, echo_rates = [], []
            hit_lat: list[float] = []
            echo_lat: list[float] = []
            server_lat: list[float] = []
            for _ in range(rounds):
                rate, lat, resps = await _drive(stub.Compress, request, calls, concurrency)
                if not all(r.stats.cache_hit for r in resps):
                    raise RuntimeError("a timed Compress call missed the cache")
                hit_rates.append(rate)
                hit_lat += lat
                server_lat += [r.stats.total_seconds for r in resps]
                rate, lat, _ = await _drive(echo_call, request, calls, concurrency)
                echo_rates.append(rate)
                echo_lat += lat
        await echo.stop(0)
    await app.stop(grace=0)

    hit_rate, echo_rate = statistics.median(hit_rates), statistics.median(echo_rates)
    ms = 1e3
    return {
        "payload_bytes": len(text.encode()),
        "request_bytes": request.ByteSize(),
        "response_bytes": canned.ByteSize(),
        "concurrency": concurrency,
        "calls_per_round": calls,
        "rounds": rounds,
        "hit": {
            "calls_per_s": hit_rate,
            "calls_per_s_rounds": hit_rates,
            "client_p50_ms": _pct(hit_lat, 0.50) * ms,
            "client_p95_ms": _pct(hit_lat, 0.95) * ms,
            "server_p50_ms": _pct(server_lat, 0.50) * ms,
            "server_p95_ms": _pct(server_lat, 0.95) * ms,
        },
        "echo": {
            "calls_per_s": echo_rate,
            "calls_per_s_rounds": echo_rates,
            "client_p50_ms": _pct(echo_lat, 0.50) * ms,
            "client_p95_ms": _pct(echo_lat, 0.95) * ms,
        },
        "hit_over_echo": hit_rate / echo_rate,
        "target": TARGET_RATIO,
        "meets_target": hit_rate / echo_rate >= TARGET_RATIO,
        "setup": "client, llmcompress server and echo server share one process and event loop",
        "loadavg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def measure(
    passages: list[dict[str, str]] | None = None,
    *,
    calls: int = 2000,
    concurrency: int = 16,
    payload_bytes: int = 2048,
    rounds: int = 3,
) -> dict[str, Any]:
    """Cache-hit Compress vs bare echo, side by side; see the module docstring.

    With `passages` (the harness's subset), the payload is the one closest to
    `payload_bytes`; without, it comes from the corpus (corpus/passages.jsonl)."""
    text = None
    if passages:
        text = min(
            (p["text"] for p in passages), key=lambda t: abs(len(t.encode()) - payload_bytes)
        )
    return asyncio.run(_measure(calls, concurrency, payload_bytes, rounds, text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and side")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--payload-bytes", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args(argv)
    r = measure(
        calls=args.calls,
        concurrency=args.concurrency,
        payload_bytes=args.payload_bytes,
        rounds=args.rounds,
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    hit, echo = r["hit"], r["echo"]
    print(
        f"payload {r['payload_bytes']} B text (request {r['request_bytes']} B, response "
        f"{r['response_bytes']} B), concurrency {r['concurrency']}, "
        f"{r['rounds']} x {r['calls_per_round']} calls per side, load {r['loadavg_1m']:.1f} "
        f"on {r['cpus']} cpus"
    )
    print(
        f"cache hit : {hit['calls_per_s']:8.0f} calls/s  client p50 {hit['client_p50_ms']:.2f} ms"
        f" p95 {hit['client_p95_ms']:.2f} ms  server p50 {hit['server_p50_ms']:.3f} ms"
        f" p95 {hit['server_p95_ms']:.3f} ms"
    )
    print(
        f"bare echo : {echo['calls_per_s']:8.0f} calls/s  client p50 {echo['client_p50_ms']:.2f} ms"
        f" p95 {echo['client_p95_ms']:.2f} ms"
    )
    verdict = "meets" if r["meets_target"] else "BELOW"
    print(f"hit/echo  : {r['hit_over_echo']:.1%} ({verdict} the {r['target']:.0%} target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
