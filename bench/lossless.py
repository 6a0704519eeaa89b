"""LOSSLESS benchmark: ratio against zstd -19 and brotli -11, and speed against the raw engine.

`measure(passages)` runs everything in one process, passage by passage (raw
evaluation, compress, reconstruct side by side), so the speed fraction holds
even on a busy machine where absolute B/s do not. Passages run one per core
(`--workers`), each on its own engine worker with the codec's thread count.
`python -m bench.lossless [--every 4] [--limit N] [--workers N] [-o out.json]`, or
`--text PATH` for one whole file as one text (such as the Canterbury alice29.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import brotli
import zstandard

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.app import build_codecs
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs.lossless import LosslessCodec, fingerprint_fields
from llmcompress_server.config import Config, load_config
from llmcompress_server.domain import CompressCommand, Mode
from llmcompress_server.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "passages.jsonl"


def _config(workers: int) -> Config:
    return load_config(
        environ={},
        overrides={
            "model": {"embedded": {"preload": False, "workers": workers}},
            "monitoring": {"enable_prometheus": False},
            "performance": {"max_queue": 4},
        },
    )


def default_workers() -> int:
    """One passage per core, each coded with the codec's one thread."""
    return max(1, min(2, os.cpu_count() or 1))


async def _measure(
    passages: list[dict[str, str]], verify: bool, workers: int, speed: bool
) -> dict[str, Any]:
    config = _config(workers)
    engine = EmbeddedEngine(config.model.embedded)
    await engine.start()
    codecs = build_codecs(config, engine)
    codec = codecs[Mode.LOSSLESS]
    assert isinstance(codec, LosslessCodec)
    pipeline = Pipeline(config, codecs)
    zstd = zstandard.ZstdCompressor(level=19)
    gate = asyncio.Semaphore(workers)

    async def one(n: int, item: dict[str, str]) -> dict[str, Any]:
        text = item["text"]
        data = text.encode("utf-8")
        async with gate:
            tokens = (await engine.run(lambda w, d=data: codec.tokenize(d, w))).tokens
            # The raw pass runs before the coding passes for even passages and after
            # them for odd ones: over the subset, load drift on a shared machine
            # cancels out, and every passage costs three passes instead of four.
            raw_s = 0.0
            if speed and n % 2 == 0:
                raw_s = await _timed(codec.evaluate(tokens))
            t1 = time.perf_counter()
            out = await pipeline.compress(
                CompressCommand(text=text, mode=Mode.LOSSLESS, verify=verify)
            )
            t2 = time.perf_counter()
            back = await pipeline.reconstruct(out.envelope)
            t3 = time.perf_counter()
            if speed and n % 2 == 1:
                raw_s = await _timed(codec.evaluate(tokens))
        row = {
            "id": item.get("id", ""),
            "bytes": len(data),
            "tokens": len(tokens),
            "envelope": len(out.envelope),
            # The coded tokens alone; the rest is the header and fingerprint.
            "stream": len(pb.Envelope.FromString(out.envelope).lossless.stream),
            "mode": out.mode.value,
            "reason": out.reason,
            # Bytes coded through split spans or byte tokens (tokens.ExactTokenizer).
            "piecewise": out.piecewise_bytes,
            "exact": back.exact and back.text == text,
            "zstd19": len(zstd.compress(data)),
            "brotli11": len(brotli.compress(data, quality=11)),
            "raw_s": raw_s,
            "compress_s": t2 - t1,
            "reconstruct_s": t3 - t2,
        }
        print(
            f"  {row['id']:<16} {len(data):>6} B  {len(data) / len(out.envelope):5.2f}x"
            f"  exact={row['exact']}",
            file=sys.stderr,
        )
        return row

    try:
        rows = list(await asyncio.gather(*(one(n, item) for n, item in enumerate(passages))))
    finally:
        await engine.close()
    return _summary(rows, codec, verify, workers, speed)


async def _timed(work: Awaitable[None]) -> float:
    t0 = time.perf_counter()
    await work
    return time.perf_counter() - t0


def _summary(
    rows: list[dict[str, Any]], codec: LosslessCodec, verify: bool, workers: int, speed: bool
) -> dict[str, Any]:
    total = sum(r["bytes"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)

    def ratio(key: str) -> tuple[float, float]:
        return (
            total / sum(r[key] for r in rows),
            statistics.median(r["bytes"] / r[key] for r in rows),
        )

    lossless, lossless_median = ratio("envelope")
    zstd19, zstd19_median = ratio("zstd19")
    brotli11, brotli11_median = ratio("brotli11")
    raw_s = sum(r["raw_s"] for r in rows)
    compress_s = sum(r["compress_s"] for r in rows)
    reconstruct_s = sum(r["reconstruct_s"] for r in rows)
    fp = fingerprint_fields(codec.fingerprint)
    return {
        "passages": len(rows),
        "bytes": total,
        "tokens": tokens,
        "exact": sum(r["exact"] for r in rows),
        "total": len(rows),
        "degraded": sum(r["mode"] != Mode.LOSSLESS.value for r in rows),
        "lossless_ratio": lossless,
        "lossless_ratio_median": lossless_median,
        "zstd19_ratio": zstd19,
        "zstd19_ratio_median": zstd19_median,
        "brotli11_ratio": brotli11,
        "brotli11_ratio_median": brotli11_median,
        "ratio_vs_brotli11": lossless / brotli11,
        "stream_ratio": total / sum(r["stream"] for r in rows),
        "stream_bits_per_byte": 8 * sum(r["stream"] for r in rows) / total,
        "bits_per_byte": 8 * sum(r["envelope"] for r in rows) / total,
        "piecewise_bytes": sum(r["piecewise"] for r in rows),
        "piecewise_share": sum(r["piecewise"] for r in rows) / total,
        "mean_overhead_bytes": statistics.mean(r["envelope"] - r["stream"] for r in rows),
        "verify": verify,
        # Passages coded at the same time, each on its own engine worker; B/s are per worker.
        "workers": workers,
        "compress_bytes_per_s": total / compress_s,
        "reconstruct_bytes_per_s": total / reconstruct_s,
        # None without a timed raw pass (--no-speed).
        "raw_tokens_per_s": tokens / raw_s if speed else None,
        "raw_bytes_per_s": total / raw_s if speed else None,
        # Compress with verify does the work twice; compare per coding pass.
        "compress_fraction_of_raw": raw_s * (2 if verify else 1) / compress_s if speed else None,
        "reconstruct_fraction_of_raw": raw_s / reconstruct_s if speed else None,
        "engine": fp["engine"],
        "threads": fp["threads"],
        "n_ctx": fp["n_ctx"],
        "schedule": fp["schedule"],
        "by_size": _by_size(rows),
        "rows": rows,
    }


# Where the fixed header stops mattering: ratios per passage size.
SIZE_EDGES = (1024, 2048, 4096)


def _by_size(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    edges = [0, *SIZE_EDGES, None]
    for lo, hi in itertools.pairwise(edges):
        group = [r for r in rows if r["bytes"] >= lo and (hi is None or r["bytes"] < hi)]
        if not group:
            continue
        total = sum(r["bytes"] for r in group)
        ours = total / sum(r["envelope"] for r in group)
        brotli11 = total / sum(r["brotli11"] for r in group)
        stream = total / sum(r["stream"] for r in group)
        name = f"{lo // 1024}-{hi // 1024} KB" if hi else f">={lo // 1024} KB"
        out[name] = {
            "passages": len(group),
            "lossless_ratio": ours,
            "brotli11_ratio": brotli11,
            "vs_brotli11": ours / brotli11,
            "stream_vs_brotli11": stream / brotli11,
        }
    return out


def measure(
    passages: list[dict[str, str]],
    *,
    verify: bool = False,
    workers: int | None = None,
    speed: bool = True,
) -> dict[str, Any]:
    """LOSSLESS on `passages` ({"id", "text"} dicts): ratios, exact/total, speeds.

    Compress runs without verify by default, so compress B/s is one coding pass
    and compares directly with the raw engine speed.
    """
    return asyncio.run(_measure(passages, verify, workers or default_workers(), speed))


def table(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"LOSSLESS on {r['passages']} passages, {r['bytes']} B, {r['tokens']} tokens "
        f"({r['engine']}, {r['threads']} thread(s), n_ctx {r['n_ctx']}, "
        f"{r['workers']} passage(s) at a time; B/s are per worker)",
        f"  exact               {r['exact']}/{r['total']}  (degraded {r['degraded']})",
        f"  ratio total/median  lossless {r['lossless_ratio']:.2f}x"
        f"/{r['lossless_ratio_median']:.2f}x"
        f"  zstd-19 {r['zstd19_ratio']:.2f}x/{r['zstd19_ratio_median']:.2f}x"
        f"  brotli-11 {r['brotli11_ratio']:.2f}x/{r['brotli11_ratio_median']:.2f}x",
        f"  vs brotli -11       {r['ratio_vs_brotli11']:.2f}x  (target >= 2.3x)",
        f"  bits per byte       {r['bits_per_byte']:.4f} (coded stream alone "
        f"{r['stream_bits_per_byte']:.4f})",
        f"  coded piecewise     {r['piecewise_bytes']} B ({r['piecewise_share']:.3%} of the bytes)",
        f"  coded stream only   {r['stream_ratio']:.2f}x"
        f"  ({r['stream_ratio'] / r['brotli11_ratio']:.2f}x brotli;"
        f" envelope overhead {r['mean_overhead_bytes']:.0f} B per text)",
        *(
            f"  {name:<19} {g['passages']:>3} texts  {g['lossless_ratio']:.2f}x, "
            f"{g['vs_brotli11']:.2f}x brotli (coded stream alone {g['stream_vs_brotli11']:.2f}x)"
            for name, g in r["by_size"].items()
        ),
    ]
    if r["raw_tokens_per_s"] is None:
        lines += [
            "  raw engine          not measured (--no-speed)",
            f"  compress            {r['compress_bytes_per_s']:.0f} B/s (verify={r['verify']})",
            f"  reconstruct         {r['reconstruct_bytes_per_s']:.0f} B/s",
        ]
        return "\n".join(lines)
    lines += [
        f"  raw engine          {r['raw_tokens_per_s']:.1f} tok/s, {r['raw_bytes_per_s']:.0f} B/s",
        f"  compress            {r['compress_bytes_per_s']:.0f} B/s"
        f"  ({r['compress_fraction_of_raw']:.0%} of raw per pass, verify={r['verify']})",
        f"  reconstruct         {r['reconstruct_bytes_per_s']:.0f} B/s"
        f"  ({r['reconstruct_fraction_of_raw']:.0%} of raw; target >= 90%)",
    ]
    return "\n".join(lines)


def load_passages(path: Path, every: int, limit: int | None) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    passages = [json.loads(line) for line in lines][::every]
    return passages[:limit] if limit else passages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lossless", description=__doc__)
    parser.add_argument("--every", type=int, default=4, help="take every Nth passage (1: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most N passages")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument(
        "--text", type=Path, help="code this one file as one text instead of corpus passages"
    )
    parser.add_argument("--verify", action="store_true", help="compress with verify on")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="passages coded at the same time, one engine worker each (default: %(default)s)",
    )
    parser.add_argument(
        "--no-speed",
        dest="speed",
        action="store_false",
        help="skip the raw engine pass (a third fewer passes): ratios and exactness only",
    )
    parser.add_argument("-o", "--output", type=Path, help="write JSON here (default stdout)")
    args = parser.parse_args(argv)
    if args.text:
        passages = [{"id": args.text.name, "text": args.text.read_text(encoding="utf-8")}]
    else:
        passages = load_passages(args.corpus, args.every, args.limit)
    result = measure(passages, verify=args.verify, workers=args.workers, speed=args.speed)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
        print(table(result))
    else:
        print(table(result), file=sys.stderr)
        print(text)
    return 0 if result["exact"] == result["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
