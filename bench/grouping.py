"""Near-duplicate grouping in BatchCompress, grouped vs ungrouped in one run, against the
simulated Ollama: items/s, generation and embedding calls per item, identifiers kept,
quality per item.

The corpus is `groups` passages, each sent `variants` times with its own
identifier line in front ("TICKET-48213\n..."), one group after the other. The
simulator's summaries leave a document's first line out (as a real model's
often leave out such a line), so an identifier comes back only if the envelope
keeps it. Each setting
gets a fresh in-process server on the same simulator (a process of its own);
the grouped and ungrouped runs alternate, once with the quality gate on request
only (the issue's acceptance: calls per item of the summary alone) and once
with it on every item (the default: an expansion and an embedding per item).
Model calls are the simulator's own count, by kind: generation (chat) and
embedding. Every envelope is then
reconstructed (outside the timing) to check that it holds its own ticket.
This is done on two simulators (`BACKENDS`): one with slots to spare, where
this machine's CPU sets the pace, and one whose 2 slots are the bottleneck.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import create_server
from llmcompress_server.core.config import load_config

from .overhead import SIMULATOR, _free_port, _wait_listening, simulator_overrides

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_BUILD = "section not available on this build (tests/sim_ollama.py is missing)"
GROUPED = 0.8  # compression.group_similar_threshold's default
TARGET_RATIO = 2.0
# Passages this short are stored as ZSTD (min_compress_length) or too short to group.
MIN_WORDS = 40


def near_duplicates(
    passages: list[dict[str, str]], groups: int, variants: int, seed: int = 17
) -> list[tuple[str, str, str]]:
    """(id, ticket, text): `variants` copies of each of `groups` passages, own ticket each."""
    rng = random.Random(seed)
    chosen = [p for p in passages if len(p["text"].split()) >= MIN_WORDS][:groups]
    tickets = rng.sample(range(10_000, 100_000), len(chosen) * variants)
    out = []
    for g, passage in enumerate(chosen):
        for v in range(variants):
            ticket = str(tickets[g * variants + v])
            out.append(
                (f"{passage['id']}#{v}", f"TICKET-{ticket}", f"TICKET-{ticket}\n{passage['text']}")
            )
    return out


GENERATION_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions")
EMBEDDING_PATHS = ("/api/embed", "/v1/embeddings")


def _sim_calls(port: int) -> dict[str, int]:
    """The simulator's model calls so far: all, generation and embedding."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=10) as reply:
        stats = json.loads(reply.read())
    paths = stats["paths"]
    return {
        "all": int(stats["calls"]),
        "generation": sum(int(paths.get(p, 0)) for p in GENERATION_PATHS),
        "embedding": sum(int(paths.get(p, 0)) for p in EMBEDDING_PATHS),
    }


async def _run(
    port: int, items: list[tuple[str, str, str]], threshold: float, gate: str, slots: int
) -> dict[str, Any]:
    # Target 2 as in the SEMANTIC tests against the simulator: room for a summary of
    # every passage (at the default 10 many are too short for one and stored exactly,
    # as LOSSLESS on the embedded model, which measures that model, not grouping).
    compression = {
        "group_similar_threshold": threshold,
        "quality_gate": gate,
        "target_ratio": TARGET_RATIO,
    }
    overrides = simulator_overrides(port, slots, {"compression": compression})
    app = await create_server(load_config(environ={}, overrides=overrides))
    await app.start()

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for item_id, _, text in items:
            req = pb.CompressRequest(text=text, mode=pb.MODE_SEMANTIC, skip_cache=True)
            yield pb.BatchCompressRequest(id=item_id, request=req)

    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            await channel.channel_ready()
            calls0 = await asyncio.to_thread(_sim_calls, port)
            t0 = time.perf_counter()
            answers = [r async for r in stub.BatchCompress(requests(), timeout=3600)]
            seconds = time.perf_counter() - t0
            calls1 = await asyncio.to_thread(_sim_calls, port)
            calls = {k: calls1[k] - calls0[k] for k in calls1}
            kept = await _tickets_kept(stub, items, answers)
    finally:
        await app.stop(grace=0)
    results = [a.result for a in answers if a.WhichOneof("outcome") == "result"]
    stats = [r.stats for r in results]
    scores = [s.quality.overall for s in stats if s.HasField("quality")]
    modes: dict[str, int] = {}
    for s in stats:
        name = pb.Mode.Name(s.mode).removeprefix("MODE_").lower()
        modes[name] = modes.get(name, 0) + 1
    return {
        "threshold": threshold,
        "quality_gate": gate,
        "items": len(items),
        "errors": len(answers) - len(results),
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "model_calls": calls["all"],
        "model_calls_per_item": calls["all"] / len(items),
        "generation_calls_per_item": calls["generation"] / len(items),
        "embedding_calls_per_item": calls["embedding"] / len(items),
        "groups": len({s.group for s in stats if s.group}),
        "shared_summary": sum(s.shared_summary for s in stats),
        "stored_modes": modes,
        "degraded": sum(s.degraded for s in stats),
        "quality_scored": len(scores),
        "quality_mean": sum(scores) / len(scores) if scores else None,
        "quality_min": min(scores) if scores else None,
        "median_ratio": sorted(s.ratio for s in stats)[len(stats) // 2] if stats else None,
        "own_ticket_kept": kept,
    }


async def _tickets_kept(
    stub: pb_grpc.CompressionServiceStub,
    items: list[tuple[str, str, str]],
    answers: list[pb.BatchCompressResponse],
) -> float:
    """Share of items whose reconstruction holds their own identifier and no other one."""
    tickets = {item_id: ticket for item_id, ticket, _ in items}
    every = set(tickets.values())
    good = 0
    for answer in answers:
        if answer.WhichOneof("outcome") != "result":
            continue
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=answer.result.envelope))
        numbers = set(re.findall(r"TICKET-\d+", back.text)) & every
        good += numbers == {tickets[answer.id]}
    return good / len(items)


# (name, simulator slots, seconds per call, passages): an Ollama with slots to spare
# (the overhead section's simulator), and one whose slots are the bottleneck, as a
# CPU-bound Ollama's are (fewer items, so the section stays near a minute).
BACKENDS = (("8 slots, 0.05 s/call", 8, 0.05, 25), ("2 slots, 0.25 s/call", 2, 0.25, 8))


async def measure(passages: list[dict[str, str]], *, variants: int = 4) -> dict[str, Any]:
    if importlib.util.find_spec(SIMULATOR) is None:
        return {"available": False, "reason": NOT_ON_BUILD}
    settings = {}
    for name, slots, latency, groups in BACKENDS:
        items = near_duplicates(passages, groups, variants)
        settings[name] = await _measure_backend(items, slots, latency)
        settings[name].update(groups=groups, variants=variants, items=len(items))
    first = next(iter(settings.values()))
    # The first setting's calls per item stand for the section (the target).
    return {
        "calls_per_item_on_request": first["calls_per_item_on_request"],
        "calls_per_item_always": first["calls_per_item_always"],
        "generation_calls_per_item_on_request": first["generation_calls_per_item_on_request"],
        "settings": settings,
    }


async def _measure_backend(
    items: list[tuple[str, str, str]], slots: int, latency: float
) -> dict[str, Any]:
    """The four runs (grouped or not, gate on request or always) on one simulator."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SIMULATOR,
        *("--port", str(port), "--slots", str(slots), "--latency", str(latency)),
        "--summary-skips-first-line",
        cwd=ROOT,
    )
    runs: dict[str, dict[str, Any]] = {}
    try:
        await _wait_listening(port, proc, 15.0)
        for gate in ("on_request", "always"):
            # Alternate which goes first, so neither always meets a cold simulator.
            order = [GROUPED, 0.0] if gate == "on_request" else [0.0, GROUPED]
            for threshold in order:
                name = f"{'grouped' if threshold else 'ungrouped'}, gate {gate}"
                print(f"bench.grouping: {slots} slots: {name}: {len(items)} items", file=sys.stderr)
                runs[name] = await _run(port, items, threshold, gate, slots)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    out: dict[str, Any] = {"slots": slots, "latency_s": latency, "runs": runs}
    for gate in ("on_request", "always"):
        grouped, ungrouped = runs[f"grouped, gate {gate}"], runs[f"ungrouped, gate {gate}"]
        out[f"items_per_s_ratio_{gate}"] = grouped["items_per_s"] / ungrouped["items_per_s"]
        out[f"calls_per_item_{gate}"] = {
            "grouped": grouped["model_calls_per_item"],
            "ungrouped": ungrouped["model_calls_per_item"],
        }
        out[f"generation_calls_per_item_{gate}"] = {
            "grouped": grouped["generation_calls_per_item"],
            "ungrouped": ungrouped["generation_calls_per_item"],
        }
    return out
