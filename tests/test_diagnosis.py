"""`llmc stats` after a short load run names the stage that ate the time."""

from __future__ import annotations

import asyncio
import sys

import grpc

from llmcompress_server.app import App
from llmcompress_server.pb import compression_pb2 as pb
from llmcompress_server.pb import compression_pb2_grpc as pb_grpc
from tests.conftest import slow_text


async def test_llmc_stats_names_the_slowest_stage(server: App) -> None:
    # zstd -19 on ~200 KB takes a few hundred ms; validate and pack take microseconds.
    texts = [slow_text(200_000, seed=i) for i in range(3)] + [
        f"short text {i} " * 10 for i in range(5)
    ]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        for text in texts:
            await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmcompress.cli",
        "stats",
        "--server",
        server.address,
        "--timeout",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    report = out.decode()
    rows = {
        line.split()[0]: line.split() for line in report.splitlines()[2:] if line.startswith("  ")
    }
    assert {"validate", "zstd.encode", "pack"} <= rows.keys(), report
    assert int(rows["zstd.encode"][1]) == len(texts)
    slowest = [line for line in report.splitlines() if line.startswith("slowest stage")]
    assert slowest and slowest[0].endswith(": zstd.encode"), report
    # zstd.encode has no nested stages: its own time is its whole time.
    assert rows["zstd.encode"][3] == rows["zstd.encode"][5]
