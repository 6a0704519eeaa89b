"""`llmc stats` after a short load run names the stage that ate the time."""

from __future__ import annotations

import asyncio
import sys

import grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App
from tests.conftest import SimFactory, StartServer, load_corpus, semantic_server, slow_text


async def llmc_stats(address: str) -> tuple[str, dict[str, list[str]]]:
    """`llmc stats` run as a user runs it: the report and its rows by stage name."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmcompress.cli", "stats", "--server", address, "--timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    report = out.decode()
    rows = {
        line.split()[0]: line.split() for line in report.splitlines()[2:] if line.startswith("  ")
    }
    return report, rows


async def test_llmc_stats_names_the_llm_call_after_a_semantic_run(
    start_server: StartServer, sim_ollama: SimFactory
) -> None:
    # Every model call holds the simulated Ollama 0.3 s; everything else takes milliseconds.
    sim = await sim_ollama(latency=0.3, slots=4)
    app = await semantic_server(start_server, sim.url)
    texts = [p["text"] for p in load_corpus() if len(p["text"]) > 400][:10]
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        answers = await asyncio.gather(
            *(stub.Compress(pb.CompressRequest(text=t, mode=pb.MODE_SEMANTIC)) for t in texts)
        )
    assert all(a.stats.mode == pb.MODE_SEMANTIC and not a.stats.degraded for a in answers)
    assert sim.stats.calls >= len(texts)
    report, rows = await llmc_stats(app.address)
    assert int(rows["semantic.summarize"][1]) == len(texts), report
    slowest = [line for line in report.splitlines() if line.startswith("slowest stage")]
    # The summary stage holds the model call (the GenAI span is not a stage of its own).
    assert slowest and slowest[0].endswith(": semantic.summarize"), report
    assert float(rows["semantic.summarize"][5]) >= 300.0, report  # its own p95, in ms


async def test_llmc_stats_names_the_slowest_stage(server: App) -> None:
    # zstd -19 on ~200 KB takes a few hundred ms; validate and pack take microseconds.
    texts = [slow_text(200_000, seed=i) for i in range(3)] + [
        f"short text {i} " * 10 for i in range(5)
    ]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        for text in texts:
            await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))
    report, rows = await llmc_stats(server.address)
    assert {"validate", "zstd.encode", "pack"} <= rows.keys(), report
    assert int(rows["zstd.encode"][1]) == len(texts)
    slowest = [line for line in report.splitlines() if line.startswith("slowest stage")]
    assert slowest and slowest[0].endswith(": zstd.encode"), report
    # zstd.encode has no nested stages: its own time is its whole time.
    assert rows["zstd.encode"][3] == rows["zstd.encode"][5]
