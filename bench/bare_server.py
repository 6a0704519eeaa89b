"""The bare-gRPC ceiling for BatchCompress: grpc.aio on the same protos, zstd -3 per item.

`python -m bench.bare_server --port P` answers each BatchCompress item with a zstd -3
frame of its text and the byte counts, and nothing else: no admission, cache,
envelope, spans or metrics. What `llmc serve` carries beside it, in the same run,
is the service's share of what gRPC in Python can carry here.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import zstandard

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc


class BareService(pb_grpc.CompressionServiceServicer):
    def __init__(self) -> None:
        self.zstd = zstandard.ZstdCompressor(level=3)

    async def BatchCompress(
        self,
        request_iterator: AsyncIterable[pb.BatchCompressRequest],
        context: grpc.aio.ServicerContext[pb.BatchCompressRequest, pb.BatchCompressResponse],
    ) -> AsyncIterator[pb.BatchCompressResponse]:
        async for item in request_iterator:
            data = item.request.text.encode("utf-8")
            frame = self.zstd.compress(data)
            stats = pb.Stats(original_bytes=len(data), compressed_bytes=len(frame))
            yield pb.BatchCompressResponse(
                id=item.id, result=pb.CompressResponse(envelope=frame, stats=stats)
            )


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_CompressionServiceServicer_to_server(BareService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
