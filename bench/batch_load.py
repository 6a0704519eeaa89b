"""A BatchCompress load, run as a process of its own (as a user's client is).

`python -m bench.batch_load ADDRESS ITEMS [--mode M] [--streams S] [--cache] < texts.json`:
streams ITEMS items (the texts in turn; the cache bypassed unless --cache) through S BatchCompress
calls at once, the items dealt round-robin, and prints one JSON line: answers,
distinct ids, errors, degraded, seconds, the text and envelope bytes, and this
process's CPU seconds. In the server's process the client would take its CPU
from the server's event loop and understate what the server can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc

MODES = {"semantic": pb.MODE_SEMANTIC, "zstd": pb.MODE_ZSTD, "lossless": pb.MODE_LOSSLESS}


async def drive(
    address: str,
    texts: list[str],
    items: int,
    mode: str = "semantic",
    streams: int = 1,
    cache: bool = False,
) -> dict[str, Any]:
    # Built before the clock starts: the load measures the server, not message building.
    requests = [
        pb.BatchCompressRequest(
            id=str(i),
            request=pb.CompressRequest(
                text=texts[i % len(texts)], mode=MODES[mode], skip_cache=not cache
            ),
        )
        for i in range(items)
    ]

    async def send(share: list[pb.BatchCompressRequest]) -> AsyncIterator[pb.BatchCompressRequest]:
        for request in share:
            yield request

    answered: set[str] = set()
    totals = {"answers": 0, "errors": 0, "degraded": 0, "text_bytes": 0, "envelope_bytes": 0}

    async def stream(stub: pb_grpc.CompressionServiceStub, share: list[Any]) -> None:
        async for reply in stub.BatchCompress(send(share), timeout=3600):
            totals["answers"] += 1
            answered.add(reply.id)
            if reply.WhichOneof("outcome") == "error":
                totals["errors"] += 1
            else:
                stats = reply.result.stats
                totals["degraded"] += stats.degraded
                totals["text_bytes"] += stats.original_bytes
                totals["envelope_bytes"] += len(reply.result.envelope)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        await channel.channel_ready()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(stream(stub, requests[s::streams]) for s in range(streams)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {
        **totals,
        "distinct_ids": len(answered),
        "seconds": elapsed,
        "client_cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address", help="host:port of the llmcompress server")
    parser.add_argument("items", type=int)
    parser.add_argument("--mode", choices=sorted(MODES), default="semantic")
    parser.add_argument("--streams", type=int, default=1, help="BatchCompress calls at once")
    parser.add_argument("--cache", action="store_true", help="let the server's cache answer")
    args = parser.parse_args()
    texts = [str(t) for t in json.load(sys.stdin)]
    result = asyncio.run(
        drive(args.address, texts, args.items, args.mode, args.streams, args.cache)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
