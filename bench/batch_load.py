"""The BatchCompress load for bench.overhead, run as a process of its own (as a user's client is).

`python -m bench.batch_load ADDRESS ITEMS < texts.json`: streams ITEMS SEMANTIC
items (the texts in turn, cache bypassed) through one BatchCompress call and
prints one JSON line: answers, distinct ids, errors, degraded, seconds, and
this process's CPU seconds. In the server's process the client would take its
CPU from the server's event loop and understate what the server can do.
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


async def drive(address: str, texts: list[str], items: int) -> dict[str, Any]:
    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for i in range(items):
            req = pb.CompressRequest(
                text=texts[i % len(texts)], mode=pb.MODE_SEMANTIC, skip_cache=True
            )
            yield pb.BatchCompressRequest(id=str(i), request=req)

    answered: set[str] = set()
    answers = errors = degraded = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        await channel.channel_ready()
        cpu0, t0 = time.process_time(), time.perf_counter()
        async for reply in stub.BatchCompress(requests(), timeout=3600):
            answers += 1
            answered.add(reply.id)
            if reply.WhichOneof("outcome") == "error":
                errors += 1
            else:
                degraded += reply.result.stats.degraded
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {
        "answers": answers,
        "distinct_ids": len(answered),
        "errors": errors,
        "degraded": degraded,
        "seconds": elapsed,
        "client_cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address", help="host:port of the llmcompress server")
    parser.add_argument("items", type=int)
    args = parser.parse_args()
    texts = [str(t) for t in json.load(sys.stdin)]
    print(json.dumps(asyncio.run(drive(args.address, texts, args.items))), flush=True)


if __name__ == "__main__":
    main()
