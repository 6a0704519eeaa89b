"""SEMANTIC on the embedded model: ratio, similarity, entity recall, chrF and latency.

`measure(passages)` runs the SEMANTIC codec in-process (the same code the
server runs) on each passage: compress, seal, reconstruct from the sealed
bytes, then score. `--variants` compares summary strategies and body coders
side by side on one engine (`measure_variants`); for extractive variants
`--expand` also scores the 135M model's expansion of the extract, the
alternative reconstruction the codec does not use. `make bench` calls
`measure`; `python -m bench.semantic` runs it on a fixed subset of the shared
corpus: by default every 32nd passage from #2 (6 passages, 1.0-4.3 KB, all
three sources), a few minutes on an idle 2-core machine;
`--every/--start/--limit` pick another fixed subset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.app import build_codecs
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs import CompressOptions
from llmcompress_server.codecs.semantic import SemanticCodec, required_entities
from llmcompress_server.config import Config, load_config
from llmcompress_server.domain import Mode
from llmcompress_server.entities import Entity, extract_entities
from llmcompress_server.envelope import open_envelope, seal
from llmcompress_server.pipeline import Pipeline
from llmcompress_server.quality import entity_recall, score
from llmcompress_server.stages import StageClock
from llmcompress_server.summarize import expand

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "passages.jsonl"
# The naive-prompt baseline of issue 4 (SmolLM2-135M, held-out chat logs).
BASELINE = {
    "median_ratio": 9.0,
    "median_similarity": 0.46,
    "facts_kept": 0.13,
    "seconds_per_3kb": 13,
}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# name -> (compression.semantic_summary, compression.semantic_coder)
VARIANTS = {
    "abstractive+brotli": ("abstractive", "brotli"),
    "abstractive+lossless": ("abstractive", "lossless"),
    "extractive+brotli": ("extractive", "brotli"),
    "extractive+lossless": ("extractive", "lossless"),
}


async def _run(
    passages: list[dict[str, str]],
    config: Config,
    target_ratio: float,
    engine: EmbeddedEngine | None = None,
    compare_expansion: bool = False,
) -> dict[str, Any]:
    own = engine is None
    if engine is None:
        engine = EmbeddedEngine(config.model.embedded)
    await engine.start()
    codecs = build_codecs(config, engine, engine)
    codec = codecs[Mode.SEMANTIC]
    assert isinstance(codec, SemanticCodec)
    # Its fallbacks too (compression.semantic_fallback), as a server stores them.
    pipeline = Pipeline(config, codecs)
    items: list[dict[str, Any]] = []
    try:
        for row in passages:
            text = row["text"]
            data = text.encode("utf-8")
            t0 = time.perf_counter()
            encoded = await pipeline.encode(
                Mode.SEMANTIC, text, CompressOptions(target_ratio=target_ratio), StageClock()
            )
            blob = seal(data, encoded.envelope, encoded.model)
            t_compress = time.perf_counter() - t0
            item: dict[str, Any] = {
                "id": row["id"],
                "bytes": len(data),
                "envelope_bytes": len(blob),
                "ratio": len(data) / len(blob),
                "mode": pb.Mode.Name(encoded.envelope.mode),
                "reason": encoded.reason,
                "compress_s": t_compress,
            }
            if encoded.envelope.mode == pb.MODE_SEMANTIC:
                t0 = time.perf_counter()
                decoded = await codec.decode(open_envelope(blob), StageClock())
                item["reconstruct_s"] = time.perf_counter() - t0
                entities = extract_entities(text)
                q = await score(text, decoded.text, entities, engine, codec.embedder)
                item.update(
                    similarity=q.similarity,
                    embedding_model=q.embedding_model,
                    chrf=q.chrf,
                    overall=q.overall,
                    stored_entity_recall=decoded.quality.entity_recall if decoded.quality else 0.0,
                    original_entity_recall=entity_recall(decoded.text, entities),
                    entities=len(entities),
                    reconstruction_chars=len(decoded.text),
                    extractive=encoded.envelope.semantic.extractive,
                    coded=encoded.envelope.semantic.HasField("coded"),
                )
                if compare_expansion and encoded.envelope.semantic.extractive:
                    body = await codec._open(open_envelope(blob), StageClock())
                    grown = await expand(
                        engine,
                        body.summary,
                        [Entity(f.kind, f.text) for f in body.facts],
                        required_entities(body),
                        len(data),
                        retries=config.compression.semantic_retries,
                        max_tokens=config.compression.expand_max_tokens,
                    )
                    qx = await score(text, grown.text, entities, engine, codec.embedder)
                    item.update(expanded_similarity=qx.similarity, expanded_chrf=qx.chrf)
            items.append(item)
            print(json.dumps({k: v for k, v in item.items() if k != "reason"}), file=sys.stderr)
    finally:
        if own:
            await engine.close()
    sem = [i for i in items if i["mode"] == "MODE_SEMANTIC"]
    kb3 = [i["compress_s"] / i["bytes"] * 3000 for i in sem]
    return {
        "model": config.model.embedded.model_name,
        "target_ratio": target_ratio,
        "passages": len(items),
        "stored_semantic": len(sem),
        "median_ratio": statistics.median(i["ratio"] for i in items) if items else 0.0,
        "median_similarity": statistics.median(i["similarity"] for i in sem) if sem else 0.0,
        "embedding_model": sem[0]["embedding_model"] if sem else "",
        "stored_entity_recall": statistics.mean(i["stored_entity_recall"] for i in sem)
        if sem
        else 0.0,
        "original_entity_recall": statistics.mean(i["original_entity_recall"] for i in sem)
        if sem
        else 0.0,
        "median_chrf": statistics.median(i["chrf"] for i in sem) if sem else 0.0,
        "median_overall": statistics.median(i["overall"] for i in sem) if sem else 0.0,
        "compress_p50_s": _pct([i["compress_s"] for i in items], 0.5),
        "compress_p95_s": _pct([i["compress_s"] for i in items], 0.95),
        "reconstruct_p50_s": _pct([i["reconstruct_s"] for i in sem], 0.5),
        "reconstruct_p95_s": _pct([i["reconstruct_s"] for i in sem], 0.95),
        "compress_s_per_3kb_median": statistics.median(kb3) if kb3 else 0.0,
        **_expanded(sem),
        "baseline_naive_prompt": BASELINE,
        "items": items,
    }


def _expanded(sem: list[dict[str, Any]]) -> dict[str, float]:
    grown = [i for i in sem if "expanded_similarity" in i]
    if not grown:
        return {}
    return {
        "expanded_median_similarity": statistics.median(i["expanded_similarity"] for i in grown),
        "expanded_median_chrf": statistics.median(i["expanded_chrf"] for i in grown),
    }


async def _run_variants(
    passages: list[dict[str, str]],
    names: list[str],
    target_ratio: float,
    compare_expansion: bool,
) -> dict[str, Any]:
    base = load_config(environ={}, overrides={"model": {"embedded": {"preload": False}}})
    engine = EmbeddedEngine(base.model.embedded)
    out: dict[str, Any] = {}
    try:
        for name in names:
            summary, coder = VARIANTS[name]
            config = load_config(
                environ={},
                overrides={
                    "model": {"embedded": {"preload": False}},
                    "compression": {"semantic_summary": summary, "semantic_coder": coder},
                },
            )
            print(f"== {name}", file=sys.stderr)
            out[name] = await _run(passages, config, target_ratio, engine, compare_expansion)
    finally:
        await engine.close()
    return out


# Issue 4's acceptance point: similarity >= 0.6 at a median ratio >= 8x.
DEFAULT_TARGET_RATIO = 8.0


def measure(
    passages: list[dict[str, str]], target_ratio: float = DEFAULT_TARGET_RATIO
) -> dict[str, Any]:
    """SEMANTIC numbers for these passages (starts and closes its own embedded engine)."""
    config = load_config(environ={}, overrides={"model": {"embedded": {"preload": False}}})
    return asyncio.run(_run(passages, config, target_ratio))


def measure_variants(
    passages: list[dict[str, str]],
    names: list[str],
    target_ratio: float = DEFAULT_TARGET_RATIO,
    compare_expansion: bool = False,
) -> dict[str, Any]:
    """`measure` for each named variant (see VARIANTS), one engine, side by side."""
    return asyncio.run(_run_variants(passages, names, target_ratio, compare_expansion))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=int, default=32, help="take every Nth passage")
    parser.add_argument("--start", type=int, default=2, help="index of the first passage")
    parser.add_argument("--limit", type=int, default=0, help="at most this many (0: no limit)")
    parser.add_argument("--target-ratio", type=float, default=DEFAULT_TARGET_RATIO)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("-o", "--output", type=Path, help="write the JSON result here")
    parser.add_argument(
        "--variants",
        help=f"comma-separated, side by side: {','.join(VARIANTS)} (default: the server default)",
    )
    parser.add_argument(
        "--expand", action="store_true", help="extractive: also score the LLM expansion"
    )
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.corpus.read_text(encoding="utf-8").splitlines()]
    picked = rows[args.start :: args.every]
    if args.limit:
        picked = picked[: args.limit]
    if args.variants:
        names = args.variants.split(",")
        result = measure_variants(picked, names, args.target_ratio, args.expand)
        summary: dict[str, Any] = {
            n: {k: v for k, v in r.items() if k != "items"} for n, r in result.items()
        }
    else:
        result = measure(picked, args.target_ratio)
        summary = {k: v for k, v in result.items() if k != "items"}
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
