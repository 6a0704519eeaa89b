"""Envelopes of every mode and body kind, written by one `llmc serve` process, reconstruct
in another process started afterwards (no state shared but the envelope bytes).

Kinds: ZSTD, LOSSLESS, SEMANTIC extractive with a model-coded body, SEMANTIC
extractive brotli-packed, SEMANTIC abstractive (brotli). The abstractive kind needs
a chat backend other than the embedded engine: the simulated Ollama (in this test's
process) serves both the writer and the reader. Exact kinds must give the original
back; lossy kinds the same text the writer's own Reconstruct gave.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc

from ..conftest import SimFactory, load_corpus
from .processes import Serve

pytestmark = pytest.mark.model

SHORT_ID = "alice29-0160"  # 325 bytes: LOSSLESS codes it token by token
SEMANTIC_ID = "lcet10-0015"  # 1.4 KB, with numbers, dates and names to keep as facts


@dataclass
class Written:
    kind: str
    text: str
    envelope: bytes
    back: str  # what the writer's own Reconstruct gave


def body_kind(envelope: bytes) -> str:
    env = pb.Envelope.FromString(envelope)
    body = env.WhichOneof("body")
    if body != "semantic":
        return str(body)
    sem = env.semantic
    layout = "coded" if sem.HasField("coded") else "packed" if sem.packed else "plain"
    return f"semantic-{'extractive' if sem.extractive else 'abstractive'}-{layout}"


async def write(server: Serve, kinds: dict[str, tuple[pb.Mode.ValueType, str]]) -> list[Written]:
    out = []
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        for kind, (mode, text) in kinds.items():
            made = await stub.Compress(pb.CompressRequest(text=text, mode=mode), timeout=600)
            assert made.stats.mode == mode and not made.stats.degraded, made.stats
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=made.envelope))
            out.append(Written(kind, text, made.envelope, back.text))
    return out


async def start(tmp: Path, name: str, **env: str) -> Serve:
    server = Serve(tmp / f"{name}.log", **env)
    # In a thread: the simulated Ollama answers on this test's event loop meanwhile.
    await asyncio.to_thread(server.wait_serving)
    return server


@pytest.mark.timeout(1800)
async def test_every_body_kind_reconstructs_in_a_fresh_process(
    sim_ollama: SimFactory, tmp_path: Path
) -> None:
    corpus = {item["id"]: item["text"] for item in load_corpus()}
    short, long = corpus[SHORT_ID], corpus[SEMANTIC_ID]
    sim = await sim_ollama(latency=0.0, slots=4)
    remote = {
        "OLLAMA_HOST": sim.host_port,
        "LLMC_LLM__FALLBACK_EMBEDDED": "false",
        "LLMC_LLM__ALLOW_DEGRADED": "false",
    }
    # Three writers, one per SEMANTIC configuration; they start together.
    writers = await asyncio.gather(
        start(tmp_path, "embedded"),  # auto on the embedded engine: extractive + coded
        start(tmp_path, "embedded-brotli", LLMC_COMPRESSION__SEMANTIC_CODER="brotli"),
        start(tmp_path, "ollama", **remote),  # auto on Ollama: abstractive + brotli
    )
    try:
        written = await write(
            writers[0],
            {
                "zstd": (pb.MODE_ZSTD, long),
                "lossless": (pb.MODE_LOSSLESS, short),
                "semantic-extractive-coded": (pb.MODE_SEMANTIC, long),
            },
        )
        written += await write(writers[1], {"semantic-extractive-packed": (pb.MODE_SEMANTIC, long)})
        written += await write(
            writers[2], {"semantic-abstractive-packed": (pb.MODE_SEMANTIC, long)}
        )
    finally:
        for writer in writers:
            writer.stop()
    assert [body_kind(w.envelope) for w in written] == [w.kind for w in written]

    # The reader starts after every writer is gone; it has the embedded engine (for
    # LOSSLESS and coded bodies) and the same Ollama (to expand abstractive summaries).
    reader = await start(tmp_path, "reader", **remote)
    try:
        async with grpc.aio.insecure_channel(reader.address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            for w in written:
                got = await stub.Reconstruct(
                    pb.ReconstructRequest(envelope=w.envelope), timeout=600
                )
                if w.kind in ("zstd", "lossless"):
                    assert got.exact and got.text == w.text, w.kind
                else:
                    assert not got.exact, w.kind
                    assert got.text == w.back, w.kind  # what the writer itself gave back
                    assert got.quality.entity_recall == 1.0, w.kind
    finally:
        reader.stop()
    sizes = ", ".join(f"{w.kind} {len(w.envelope)} B" for w in written)
    print(f"\nfive body kinds written by three processes, reconstructed by a fourth: {sizes}")
