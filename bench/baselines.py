"""Baselines measured in the same run: zstd -19 and brotli -11 on the same texts, and a
bare grpc.aio echo server (the ceiling for the service's own per-call overhead).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import brotli
import grpc
import zstandard

ZSTD_LEVEL = 19
BROTLI_QUALITY = 11
ECHO_PAYLOAD_BYTES = 1024
_ECHO_SERVICE = "llmcompress.bench.Echo"


def zstd_bytes(data: bytes) -> int:
    """Size of a python-zstandard level-19 frame with default frame parameters (as `zstd -19`)."""
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def brotli_bytes(data: bytes) -> int:
    """Size of a brotli quality-11 stream (as `brotli -11`), default window."""
    return len(brotli.compress(data, quality=BROTLI_QUALITY))


def compression_baselines(texts: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per text id: original, zstd -19 and brotli -11 byte counts."""
    out: dict[str, dict[str, int]] = {}
    for item_id, text in texts.items():
        data = text.encode("utf-8")
        out[item_id] = {
            "original_bytes": len(data),
            "zstd19_bytes": zstd_bytes(data),
            "brotli11_bytes": brotli_bytes(data),
        }
    return out


async def _unary_echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _stream_echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


def _echo_handler() -> grpc.GenericRpcHandler:
    # Raw bytes in and out: no protobuf work, so this is grpc.aio's own cost per call.
    return grpc.method_handlers_generic_handler(
        _ECHO_SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary_echo),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream_echo),
        },
    )


async def echo_throughput(seconds: float = 3.0, concurrency: int = 16) -> dict[str, float]:
    """Unary calls/s (`concurrency` callers) and bidi-stream messages/s, 1 KB payloads,
    client and server in this process and event loop (as DESIGN.md's 3,500 / 6,300)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    payload = b"x" * ECHO_PAYLOAD_BYTES
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary(f"/{_ECHO_SERVICE}/Unary")
            stream = channel.stream_stream(f"/{_ECHO_SERVICE}/Stream")
            await unary(payload)  # connect outside the timed window
            calls = 0
            deadline = time.perf_counter() + seconds

            async def caller() -> None:
                nonlocal calls
                while time.perf_counter() < deadline:
                    reply = await unary(payload)
                    if len(reply) != ECHO_PAYLOAD_BYTES:
                        raise RuntimeError("echo server returned a different payload")
                    calls += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            unary_elapsed = time.perf_counter() - t0

            call = stream()
            sent = received = 0
            # At most 64 messages unanswered: we measure throughput, not buffering.
            window = asyncio.Semaphore(64)
            deadline = time.perf_counter() + seconds

            async def writer() -> None:
                nonlocal sent
                while time.perf_counter() < deadline:
                    await window.acquire()
                    await call.write(payload)
                    sent += 1
                await call.done_writing()

            async def reader() -> None:
                nonlocal received
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        return
                    received += 1
                    window.release()

            t0 = time.perf_counter()
            await asyncio.gather(writer(), reader())
            stream_elapsed = time.perf_counter() - t0
    finally:
        await server.stop(0)
    if received != sent:
        raise RuntimeError(f"echo stream lost messages: sent {sent}, received {received}")
    return {
        "payload_bytes": ECHO_PAYLOAD_BYTES,
        "unary_concurrency": concurrency,
        "unary_calls": calls,
        "unary_calls_per_s": calls / unary_elapsed,
        "stream_messages": received,
        "stream_messages_per_s": received / stream_elapsed,
    }
