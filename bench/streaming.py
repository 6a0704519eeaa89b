"""Streaming records through BatchCompress (ZSTD), beside the bare-gRPC ceiling, in one run.

Each row streams every record of a set (five times over, each copy after the first
ending in " (n)") through one or four BatchCompress calls from
a client process of its own (bench.batch_load, cache on: the records are distinct, as in
a corpus import, and ZSTD texts under `cache.zstd_min_bytes` are coded without asking the
cache at all), first to `llmc serve` with the
default config (telemetry on; metrics on a free port; the model not preloaded, since
ZSTD never uses it), then to bench.bare_server: the same protos answering each item
with zstd -3 and nothing else. Both servers are processes of their own, started anew
for each run. A row gives items/s, MB/s of text, the server process's CPU per item and
the envelope ratio (text bytes / envelope bytes; for the bare server, its raw frames).
Each row runs both servers `--repeats` times in turns (A B B A ...); "share of bare" is
the best run over the best run, and in brackets the median over the turns of each run of
ours over the bare run beside it (the machine is shared: one pair can be off by 20 points).

    python -m bench.streaming --out docs/benchmarks/streaming
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.local_redis import redis_command
from bench.lossless import ROOT, _commit

CORPUS = ROOT / "corpus" / "debian-changelogs"
# (name, file, smallest and largest record in bytes)
SETS = (
    ("short records", "changelog-items.jsonl", 100, 200, 5),
    ("medium records", "changelog-medium.jsonl", 2000, 4000, 5),
)
SERVERS = {
    "llmc serve": [sys.executable, "-m", "llmcompress.cli", "serve"],
    "bare grpc.aio": [sys.executable, "-m", "bench.bare_server"],
}
SERVER_ENV = {
    "LLMC_MONITORING__PROMETHEUS_PORT": "0",
    "LLMC_MODEL__EMBEDDED__PRELOAD": "false",
}


@dataclass(frozen=True)
class Run:
    server: str
    streams: int
    items: int
    seconds: float
    text_bytes: int
    envelope_bytes: int
    server_cpu_seconds: float
    errors: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds


def records(name: str, low: int, high: int, limit: int | None, copies: int = 1) -> list[str]:
    """The set's records of `low`..`high` bytes, `copies` times over; a copy after the
    first ends in " (n)", so that no item is a cache hit of another."""
    texts = []
    for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        if low <= len(text.encode("utf-8")) <= high:
            texts.append(text)
    texts = texts[:limit] if limit else texts
    return [t if n == 0 else f"{t} ({n})" for n in range(copies) for t in texts]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SAMPLE_HZ = 250
# Where a sample's time goes. py-spy sees no frames inside gRPC's Cython and C core, so a
# sample whose last Python frame is one of these leaves was spent there.
LEAF_PARTS = (
    ("gRPC's C core, on its poller thread", r"^Thread\.run \(threading\.py"),
    ("event loop: in epoll (waiting, or gRPC work due)", r"^EpollSelector\.select "),
    ("event loop: callbacks into gRPC's C core", r"^Handle\._run \(asyncio/events\.py"),
    ("reading the next item (gRPC)", r"read \(llmcompress_server/flow/batch\.py"),
)
# Otherwise the deepest frame that matches names the part (first match wins); frames in
# no part (the servicer, the batch runner, the pipeline's own lines) count as "the
# service's own Python".
PARTS = (
    ("spans", r"opentelemetry/(sdk/)?trace|opentelemetry/context|StageClock|use_span"),
    ("metrics", r"opentelemetry/(sdk/)?metrics|telemetry/(metrics|tally)\.py"),
    ("zstd", r"zstandard|compress_bytes"),
    ("cache", r"/cache/"),
    ("envelope", r"envelope\.py"),
    ("protobuf conversions", r"domain\.py"),
    ("admission", r"admission\.py"),
    ("gRPC and interceptors", r"/grpc/|interceptor|request_metrics"),
    ("asyncio (event loop, tasks, gRPC's C core)", r"/asyncio/"),
)


def _await_listening(proc: subprocess.Popen[bytes], port: int, name: str, within: float) -> None:
    """Until `proc` accepts on 127.0.0.1:`port`; killed, and an error, if it exits first or
    takes longer than `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                raise RuntimeError(f"{name} did not listen on {port}") from None
            time.sleep(0.05)


def _server(server: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [*SERVERS[server], "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **SERVER_ENV, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _await_listening(proc, port, server, 60)
    return proc, port


def _load(port: int, texts: list[str], streams: int) -> dict[str, Any]:
    driver = [sys.executable, "-m", "bench.batch_load", f"127.0.0.1:{port}", str(len(texts))]
    load = subprocess.run(
        [*driver, "--mode", "zstd", "--streams", str(streams), "--cache"],
        cwd=ROOT,
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    out: dict[str, Any] = json.loads(load.stdout.strip().splitlines()[-1])
    if out["distinct_ids"] != len(texts) or out["answers"] != len(texts):
        raise RuntimeError(f"{out['answers']} answers for {len(texts)} items")
    return out


def measure_one(
    server: str, texts: list[str], streams: int, env: dict[str, str] | None = None
) -> Run:
    """One run of `server` (with `env` beside SERVER_ENV), started anew for it."""
    proc, port = _server(server, env)
    try:
        cpu0 = _cpu_seconds(proc.pid)
        out = _load(port, texts, streams)
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if out["distinct_ids"] != len(texts) or out["answers"] != len(texts):
        raise RuntimeError(f"{server}: {out['answers']} answers for {len(texts)} items")
    return Run(
        server, streams, len(texts), out["seconds"], out["text_bytes"],
        out["envelope_bytes"], cpu, out["errors"],
    )  # fmt: skip


def profile(texts: list[str]) -> dict[str, Any]:
    """py-spy on `llmc serve` while it answers `texts` over one stream: each part's share
    of the samples, and so of the server's CPU per item."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"available": False, "reason": "py-spy is not installed (make install adds it)"}
    proc, port = _server("llmc serve")
    raw = ROOT / "bench-out" / "streaming-profile.txt"
    raw.parent.mkdir(exist_ok=True)
    raw.unlink(missing_ok=True)
    try:
        sampler = subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(proc.pid),
                "-o",
                str(raw),
                "-f",
                "raw",
                "-r",
                "250",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        cpu0 = _cpu_seconds(proc.pid)
        out = _load(port, texts, 1)
        cpu = _cpu_seconds(proc.pid) - cpu0
        sampler.send_signal(signal.SIGINT)
        sampler.wait(timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if not raw.exists():
        return {
            "available": False,
            "reason": f"py-spy could not sample (exit {sampler.returncode})",
        }
    parts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        leaf = next((name for name, pattern in LEAF_PARTS if re.search(pattern, frames[-1])), None)
        part = leaf or "the service's own Python"
        for frame in reversed(frames if leaf is None else []):
            found = next((name for name, pattern in PARTS if re.search(pattern, frame)), None)
            if found:
                part = found
                break
        parts[part] += int(count)
    total = sum(parts.values()) or 1
    return {
        "available": True,
        "items": len(texts),
        "items_per_s": len(texts) / out["seconds"],
        "server_cpu_us_per_item": cpu / len(texts) * 1e6,
        "samples": total,
        # Samples are wall time on each thread: a part's seconds per item, summed over
        # threads (waiting included for the two parts that wait).
        "parts": {
            part: {"share": n / total, "us_per_item": n / SAMPLE_HZ / len(texts) * 1e6}
            for part, n in parts.most_common()
        },
    }


def profile_table(prof: dict[str, Any]) -> str:
    if not prof.get("available"):
        return f"Not profiled: {prof.get('reason')}."
    lines = [
        f"py-spy at {SAMPLE_HZ} Hz on `llmc serve` answering {prof['items']:,} short records "
        f"over one stream ({prof['samples']:,} samples on all its threads; "
        f"{prof['items_per_s']:,.0f} items/s while sampled, "
        f"{prof['server_cpu_us_per_item']:,.0f} µs of server CPU per item). py-spy sees no "
        "frame inside gRPC's Cython and C core: a sample whose last Python frame hands over "
        "to it counts there; any other counts for its deepest frame that names a part. A "
        "part's time is wall time on its thread, so the two that can wait (epoll, gRPC's "
        "poller thread) include waiting and do not add up to the CPU figure:",
        "",
        "| part | share of samples | µs per item (on its thread) |",
        "|---|---|---|",
    ]
    for part, p in prof["parts"].items():
        lines.append(f"| {part} | {p['share']:.1%} | {p['us_per_item']:,.0f} |")
    return "\n".join(lines)


# Runs of each server per row. Two gave shares 20 points apart between two runs of the
# bench at one commit; five take about two minutes.
REPEATS = 5


def measure(limit: int | None = None, repeats: int = REPEATS) -> dict[str, Any]:
    """Every set over 1 and 4 streams; each server `repeats` times, alternating which goes
    first, and the faster run of each kept (the machine is shared and noisy), with the
    median of each turn's share."""
    load0 = os.getloadavg()
    rows = []
    for name, file, low, high, copies in SETS:
        texts = records(file, low, high, limit, copies)
        for streams in (1, 4):
            runs: dict[str, list[Run]] = {s: [] for s in SERVERS}
            for r in range(repeats):
                order = list(SERVERS) if r % 2 == 0 else list(reversed(SERVERS))
                for server in order:
                    runs[server].append(measure_one(server, texts, streams))
            best = {s: max(rs, key=lambda run: run.items_per_s) for s, rs in runs.items()}
            ours, bare = best["llmc serve"], best["bare grpc.aio"]
            turns = [
                o.items_per_s / b.items_per_s
                for o, b in zip(runs["llmc serve"], runs["bare grpc.aio"], strict=True)
            ]
            rows.append(
                {
                    "set": name,
                    "records": len(texts),
                    "mean_bytes": sum(len(t.encode()) for t in texts) / len(texts),
                    "streams": streams,
                    "share_of_bare": ours.items_per_s / bare.items_per_s,
                    "share_of_bare_median": statistics.median(turns),
                    "servers": {
                        s: {
                            "items_per_s": run.items_per_s,
                            "each_run_items_per_s": [x.items_per_s for x in runs[s]],
                            "mb_per_s": run.text_bytes / run.seconds / 1e6,
                            "server_cpu_us_per_item": run.server_cpu_seconds / run.items * 1e6,
                            "ratio": run.text_bytes / run.envelope_bytes,
                            "errors": run.errors,
                        }
                        for s, run in best.items()
                    },
                }
            )
    _, file, low, high, copies = SETS[0]
    short = records(file, low, high, limit, copies)
    return {
        "available": True,
        "profile": profile(short),
        "cache": cache_costs(limit),
        "redis_replica": redis_replica(short, repeats),
        "commit": _commit(),
        "loadavg_start": list(load0),
        "loadavg_end": list(os.getloadavg()),
        "repeats": repeats,
        "rows": rows,
    }


# Text sizes for the cache's costs: both sides of the small-text level's bound (512 B) and
# of `cache.zstd_min_bytes` (4 KiB).
CACHE_SIZES = (140, 512, 1024, 2048, 4096, 8192, 16384)


class _Redis:
    """A redis-server of this bench's own on a free loopback port (`url` None: none is
    installed, and the table says so)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        if binary is None:
            return
        port = _free_port()
        self.proc = subprocess.Popen(
            redis_command(binary, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _await_listening(self.proc, port, "redis-server", 10)
        self.url = f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def _redis_round_trips(url: str, texts: list[str], rounds: int) -> float:
    """Seconds per text of a Redis tier's miss and store (a GET and a SET on loopback)."""
    from llmcompress_server.flow.cache.tiers import RedisTier

    tier = RedisTier(url, timeout=1.0, ttl=60.0)
    best = 1.0
    try:
        for r in range(rounds):
            keys = [hashlib.sha256(f"{r} {t}".encode()).digest() for t in texts]
            start = time.perf_counter()
            for key, text in zip(keys, texts, strict=True):
                if await tier.get(key) is not None:
                    raise RuntimeError("a fresh key was found in Redis")
                await tier.set(key, text.encode()[: len(text) // 2])  # about an envelope's size
            best = min(best, (time.perf_counter() - start) / len(texts))
    finally:
        await tier.close()
    return best


async def _cache_costs(
    texts_by_size: dict[int, list[str]], rounds: int, redis_url: str | None
) -> list[dict[str, Any]]:
    from llmcompress_server.api.server import create_server
    from llmcompress_server.codecs.zstd import ZstdCodec
    from llmcompress_server.core.config import load_config
    from llmcompress_server.core.domain import CompressCommand, Mode
    from llmcompress_server.telemetry.setup import setup_telemetry

    def app_config(min_bytes: int) -> Any:
        # Metrics on (a free port) as `llmc serve` has them; the model is not needed.
        return load_config(
            environ={},
            overrides={
                "server": {"port": 0},
                "monitoring": {"prometheus_port": 0},
                "model": {"embedded": {"preload": False}},
                "cache": {"zstd_min_bytes": min_bytes},
            },
        )

    def per_text(pipeline: Any, texts: list[str]) -> tuple[float, int]:
        hits = 0
        start = time.perf_counter()
        for text in texts:
            outcome = pipeline.compress_now(CompressCommand(text, Mode.ZSTD))
            hits += outcome.cache_hit
        return (time.perf_counter() - start) / len(texts), hits

    rows = []
    configs = {"uncached": app_config(1 << 30), "cached": app_config(0)}
    telemetry = setup_telemetry(configs["cached"])  # one per process; both report to it
    apps = {name: await create_server(config, telemetry) for name, config in configs.items()}
    try:
        uncached, cached = apps["uncached"].pipeline, apps["cached"].pipeline
        codec = uncached.codecs[Mode.ZSTD]
        assert isinstance(codec, ZstdCodec)
        for size, texts in texts_by_size.items():
            best = {"coded": 1.0, "miss": 1.0, "hit": 1.0}
            for r in range(rounds):
                fresh = [f"{t[: size - 6]} ({r:02d})" for t in texts]  # misses in every round
                best["coded"] = min(best["coded"], per_text(uncached, fresh)[0])
                miss, miss_hits = per_text(cached, fresh)
                hit, hit_hits = per_text(cached, fresh)
                if miss_hits or hit_hits != len(fresh):
                    raise RuntimeError(f"{size} B: {miss_hits} hits on misses, {hit_hits} hits")
                best["miss"], best["hit"] = min(best["miss"], miss), min(best["hit"], hit)
            adds, saves = best["miss"] - best["coded"], best["coded"] - best["hit"]
            redis = None
            if redis_url is not None:
                redis = await _redis_round_trips(redis_url, texts, rounds) * 1e6
            rows.append(
                {
                    "bytes": size,
                    "texts": len(texts),
                    "level": codec.level_for(size, False),
                    "coded_us": best["coded"] * 1e6,
                    "miss_us": best["miss"] * 1e6,
                    "hit_us": best["hit"] * 1e6,
                    # The share of texts that must be repeats (hits) for the cache to pay.
                    "break_even_repeats": adds / (adds + saves) if adds > 0 < saves else None,
                    "redis_miss_store_us": redis,
                }
            )
    finally:
        for app in apps.values():
            await app.stop(grace=0)
        telemetry.shutdown()
    return rows


def cache_costs(limit: int | None = None, rounds: int = 5) -> list[dict[str, Any]]:
    """In process, through the pipeline's inline path with metrics on: a ZSTD text coded
    with the cache off, missed and stored with it on, and then hit, at each of
    CACHE_SIZES (cut from the medium records), best of `rounds`."""
    import asyncio

    corpus = "\n".join(records("changelog-medium.jsonl", 0, 1 << 30, None))
    texts_by_size = {
        size: [corpus[i * size : (i + 1) * size] for i in range(min(limit or 400, n))]
        for size in CACHE_SIZES
        if (n := len(corpus) // size)
    }
    redis = _Redis()
    try:
        return asyncio.run(_cache_costs(texts_by_size, rounds, redis.url))
    finally:
        redis.stop()


def cache_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| text bytes | zstd level | coded, cache off | miss and store | hit | "
        "repeats needed for the cache to pay | a Redis tier's miss and store |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        even, redis = row["break_even_repeats"], row.get("redis_miss_store_us")
        lines.append(
            f"| {row['bytes']:,} | {row['level']} | {row['coded_us']:.1f} µs | "
            f"{row['miss_us']:.1f} µs | {row['hit_us']:.1f} µs | "
            f"{'never' if even is None else format(even, '.0%')} | "
            f"{'no redis-server' if redis is None else format(redis, '.0f') + ' µs'} |"
        )
    return "\n".join(lines)


# A replica with a Redis tier: the default config beside one that caches every ZSTD text.
REDIS_VARIANTS = {
    "default (short ZSTD texts skip the cache)": {},
    "cache.zstd_min_bytes 0 (every ZSTD text asks Redis and is stored there)": {
        "LLMC_CACHE__ZSTD_MIN_BYTES": "0"
    },
}


def redis_replica(texts: list[str], repeats: int) -> dict[str, Any]:
    """The short records over 4 streams to `llmc serve` with `cache.redis_url` set (a
    redis-server of the bench's own), each of REDIS_VARIANTS `repeats` times in turns;
    every run's texts are new to Redis, which outlives the servers."""
    import redis as redis_client

    redis = _Redis()
    if redis.url is None:
        return {"available": False, "reason": "redis-server is not installed"}
    runs: dict[str, list[Run]] = {name: [] for name in REDIS_VARIANTS}
    try:
        keys = redis_client.Redis.from_url(redis.url)
        for r in range(repeats):
            for n, name in enumerate(REDIS_VARIANTS if r % 2 == 0 else reversed(REDIS_VARIANTS)):
                env = {"LLMC_CACHE__REDIS_URL": redis.url, **REDIS_VARIANTS[name]}
                fresh = [f"{t} [{r}.{n}]" for t in texts]
                before = keys.dbsize()
                runs[name].append(measure_one("llmc serve", fresh, 4, env))
                # What each config claims: no key stored, or one per text.
                stored, expected = keys.dbsize() - before, len(fresh) if REDIS_VARIANTS[name] else 0
                if stored != expected:
                    raise RuntimeError(f"{name}: {stored} keys stored in Redis, not {expected}")
        keys.close()
    finally:
        redis.stop()
    return {
        "available": True,
        "texts": len(texts),
        "variants": {
            name: {
                "each_run_items_per_s": [x.items_per_s for x in rs],
                "items_per_s": max(x.items_per_s for x in rs),
                "server_cpu_us_per_item": min(x.server_cpu_seconds / x.items for x in rs) * 1e6,
            }
            for name, rs in runs.items()
        },
    }


def redis_table(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return f"Not measured: {result.get('reason')}."
    lines = [
        "| config | items/s, best (each run) | server CPU per item, least |",
        "|---|---|---|",
    ]
    for name, v in result["variants"].items():
        each = " / ".join(f"{x:,.0f}" for x in v["each_run_items_per_s"])
        lines.append(
            f"| {name} | {v['items_per_s']:,.0f} ({each}) | {v['server_cpu_us_per_item']:,.0f} µs |"
        )
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    lines = [
        "| records | streams | server | items/s (each run) | MB/s | server CPU per item | "
        "envelope ratio | share of bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for server, s in row["servers"].items():
            each = " / ".join(f"{v:,.0f}" for v in s["each_run_items_per_s"])
            share = ""
            if server == "llmc serve":
                share = f"**{row['share_of_bare']:.0%}**"
                if "share_of_bare_median" in row:
                    share += f" ({row['share_of_bare_median']:.0%})"
            lines.append(
                f"| {row['set']} ({row['records']:,}, mean {row['mean_bytes']:,.0f} B) | "
                f"{row['streams']} | {server} | {s['items_per_s']:,.0f} ({each}) | "
                f"{s['mb_per_s']:.2f} | {s['server_cpu_us_per_item']:,.0f} µs | "
                f"{s['ratio']:.3f} | {share} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__)
    parser.add_argument("--limit", type=int, help="at most N records of each set")
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"runs of each server per row, in turns (default {REPEATS})",
    )
    parser.add_argument("--out", type=Path, help="write streaming.{md,json} here")
    args = parser.parse_args(argv)
    result = measure(args.limit, args.repeats)
    text = "\n".join(
        [
            "# Streaming records through BatchCompress",
            "",
            f"`python -m bench.streaming{' --limit ' + str(args.limit) if args.limit else ''}`"
            f", commit {result['commit']}, load {result['loadavg_start'][0]:.1f} -> "
            f"{result['loadavg_end'][0]:.1f}, {os.cpu_count()} cores.",
            "",
            (__doc__ or "").split("\n\n")[0].replace("\n", " "),
            "",
            table(result),
            "",
            "## What the cache costs a ZSTD text",
            "",
            "Why ZSTD texts under `cache.zstd_min_bytes` (4 KiB) are coded, not cached. "
            "In process, through the pipeline's inline path with metrics on, best of five "
            "rounds of texts cut from the medium records: a text coded with the cache off; "
            "the same texts missed and stored with it on; then hit. The sixth column is the "
            "share of a corpus's texts that would have to be repeats for the in-process tier "
            "to save time; the last, what a Redis tier's miss and store cost (a GET and a SET "
            "on loopback, to a redis-server of the bench's own).",
            "",
            cache_table(result["cache"]) if "cache" in result else "Not measured.",
            "",
            "## A replica with a Redis tier",
            "",
            f"The short records ({result['redis_replica'].get('texts', 0):,}) over 4 streams "
            "to `llmc serve` with `cache.redis_url` set (a redis-server of the bench's own), "
            f"in the default config and caching every ZSTD text, {result['repeats']} runs "
            "each in turns; each run's texts are new to Redis.",
            "",
            redis_table(result["redis_replica"]),
            "",
            "## Where a short item's time goes",
            "",
            profile_table(result["profile"]),
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "streaming.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
