"""The coding engine's raw speed with every row live, for several (width, threads, engines).

`python -m bench.engine_widths [--tokens-per-stream 200] [--out DIR]`: on the packaged
model, each setting evaluates (no range coding) width x engines streams of the same
corpus tokens, fed so every slot of every engine is busy from the first step to the
last. This is the ceiling of a wide step on this CPU; whether a workload reaches it
depends on how many streams run at once (bench.lossless measures real ones). Choose
`model.embedded.coding_width`, `coding_threads` and `coding_engines` from both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.lossless import _commit, long_text
from llmcompress_server.backends.embedded import default_model_path
from llmcompress_server.coding.engine import CodingEngine, ContextKey
from llmcompress_server.coding.layout import Layout, Schedule
from llmcompress_server.coding.rows import IdentityRowModel
from llmcompress_server.coding.text import evaluate_tokens

# (width, threads per step, engines); (1, 1, 2) is the default (core/config.py).
SETTINGS = ((1, 1, 2), (8, 1, 2), (16, 1, 2), (16, 2, 1), (32, 2, 1), (1, 2, 1))
N_CTX = 2048


async def _timed(
    model: Any, setting: tuple[int, int, int], jobs: list[list[int]], streams: int, rounds: int
) -> dict[str, Any]:
    """`rounds` times, every job of `jobs` at once, each split into `streams` streams on a
    fresh engine of `setting`: tok/s and the share of rows live."""
    width, threads, engines = setting
    key = ContextKey(width, threads, N_CTX)
    engine = CodingEngine(model, key, lanes=engines, queue_size=max(64, len(jobs)))
    engine.start()
    layout = Layout(Schedule.RESET, N_CTX)
    try:
        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(
                *(evaluate_tokens(engine, key, layout, j, IdentityRowModel, streams) for j in jobs)
            )
        seconds = time.perf_counter() - t0
        occupancy = engine.stats.rows / engine.stats.slot_steps
    finally:
        engine.close()
    n = rounds * sum(len(j) for j in jobs)
    return {
        "width": width,
        "threads": threads,
        "engines": engines,
        "jobs": len(jobs),
        "rounds": rounds,
        "tokens": n,
        "seconds": seconds,
        "tokens_per_s": n / seconds,
        "occupancy": occupancy,
    }


def _slices(
    tokens: list[int], count: int, size: int, setting: tuple[int, int, int]
) -> list[list[int]]:
    parts = [tokens[i * size : (i + 1) * size] for i in range(count)]
    if any(len(p) < size for p in parts):
        raise SystemExit(f"{setting}: the text has too few tokens; lower --tokens-per-stream")
    return parts


async def _rate(
    model: Any, tokens: list[int], setting: tuple[int, int, int], per: int
) -> dict[str, Any]:
    """Every row live: one job of `width` streams per engine (each lane fills its own
    context), in rounds until about as many tokens as the widest setting codes, so a
    narrow setting's figure spans as long a run, not a few seconds."""
    width, _, engines = setting
    rounds = max(1, max(w * e for w, _, e in SETTINGS) // (width * engines))
    return await _timed(
        model, setting, _slices(tokens, engines, width * per, setting), width, rounds
    )


# Partial load (--jobs N): the default against the widest two-engine setting.
PARTIAL_SETTINGS = ((1, 1, 2), (16, 1, 2))


async def _jobs_rate(
    model: Any, tokens: list[int], setting: tuple[int, int, int], per: int, jobs: int
) -> dict[str, Any]:
    """`jobs` jobs of one `per`-token stream each, submitted at once (as a BatchCompress
    window of short texts arrives)."""
    return await _timed(model, setting, _slices(tokens, jobs, per, setting), 1, 1)


def measure(per: int, repeats: int = 2, jobs: int = 0) -> dict[str, Any]:
    """Every setting `repeats` times, in order then in reverse order, so a drift in the
    machine's load falls on every setting alike; each figure is the median."""
    from llama_cpp import Llama

    llama = Llama(model_path=str(default_model_path()), n_ctx=256, verbose=False)
    try:
        tokens = llama.tokenize(long_text().encode("utf-8"), add_bos=False, special=False)
        start = list(os.getloadavg())
        settings = PARTIAL_SETTINGS if jobs else SETTINGS
        runs: dict[tuple[int, int, int], list[dict[str, Any]]] = {s: [] for s in settings}
        for r in range(repeats):
            for setting in settings if r % 2 == 0 else settings[::-1]:
                run = (
                    _jobs_rate(llama.model, tokens, setting, per, jobs)
                    if jobs
                    else _rate(llama.model, tokens, setting, per)
                )
                runs[setting].append(asyncio.run(run))
    finally:
        llama.close()
    rows = []
    for setting in settings:
        rates = [run["tokens_per_s"] for run in runs[setting]]
        rows.append(
            {
                **runs[setting][0],
                "tokens_per_s": statistics.median(rates),
                "tokens_per_s_each": rates,
            }
        )
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["against_default"] = row["tokens_per_s"] / base
    return {
        "commit": _commit(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "tokens_per_stream": per,
        "jobs": jobs,
        "repeats": repeats,
        "loadavg_start": start,
        "loadavg_end": list(os.getloadavg()),
        "settings": rows,
    }


def table(result: dict[str, Any]) -> str:
    load = (
        f"{result['jobs']} jobs of one stream each, submitted at once"
        if result.get("jobs")
        else "every row live"
    )
    lines = [
        f"Raw engine, {load}, {result['tokens_per_stream']} tokens per stream, "
        f"median of {result['repeats']} runs per setting (in order, then reversed; commit "
        f"{result['commit']}, {result['machine']}, load {result['loadavg_start'][0]:.1f} -> "
        f"{result['loadavg_end'][0]:.1f})",
        "",
        "| width | threads per step | engines | tok/s | each run | against the default "
        "| rows live |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["settings"]:
        each = " / ".join(f"{x:.1f}" for x in r["tokens_per_s_each"])
        lines.append(
            f"| {r['width']} | {r['threads']} | {r['engines']} | {r['tokens_per_s']:.1f} "
            f"| {each} | {r['against_default']:.2f}x | {r['occupancy']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens-per-stream", type=int, default=200, help="tokens in each stream (200)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per setting, alternating order (2)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="instead of every row live: N jobs of one stream each at once, width 1 against "
        "width 16 (both in 2 engines)",
    )
    parser.add_argument("--out", type=Path, help="write engine_widths.{md,json} here")
    args = parser.parse_args(argv)
    result = measure(args.tokens_per_stream, args.repeats, args.jobs)
    text = table(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "engine_widths.json").write_text(json.dumps(result, indent=2) + "\n")
        command = "python -m bench.engine_widths " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        (args.out / "engine_widths.md").write_text(
            f"# Coding engine widths\n\n`{command.strip()}`\n\n{text}\n"
        )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
