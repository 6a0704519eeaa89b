"""Corpus dictionaries: each exact mode with and without one, on corpora of one kind, split
by document.

For each corpus a dictionary is trained through TrainDictionary on its `train` split
(texts of every size), then every row codes the same `test` texts of the row's sizes
(other documents: for the Debian changelogs, other source packages). The service rows
stream the texts through BatchCompress to `llmc serve` (a process of its own, default
config, LOSSLESS verify on; every text is new to its cache) from this process, and give
items/s and text B/s at the client and the envelope ratio (text bytes / envelope bytes).
A row with the dictionary and the row without take turns, chunk by chunk (ABBA), so a
change in the machine's load falls on both; ZSTD rows code the test texts five times
(after the first, each text ends in " (n)", so it is new to the cache again) and give
ratios from the first. brotli -11 is the same texts coded in this process, raw (no
envelope, nothing to reconstruct them with but brotli). LOSSLESS rows code only the
first test texts up to `--lossless` bytes (the packaged model on this CPU). The size
sweep trains dictionaries of several sizes in this process and codes the test texts with
the server's codec and envelope, beside zstd's own frames. Any JSONL corpus can be
measured with `--corpus FILE` (lines with "text", and "split" train/test or else a
"source" or "id" whose hash splits by document).

    python -m bench.dictionaries --out docs/benchmarks/dictionaries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import brotli
import zstandard

from bench.lossless import ROOT, _commit
from llmcompress import BatchItem, Client
from llmcompress_server.codecs.zstd import ZstdCodec
from llmcompress_server.core.dictionary import Dictionary
from llmcompress_server.core.envelope import seal
from llmcompress_server.flow.dictionaries import train_zstd

CHANGELOGS = ROOT / "corpus" / "debian-changelogs"
# (name, file, smallest and largest text in bytes kept; 0: no bound)
CORPORA = (
    ("changelog items, 100-200 B", CHANGELOGS / "changelog-items.jsonl", 100, 200),
    ("changelog entries", CHANGELOGS / "changelog-entries.jsonl", 0, 0),
    ("changelog records, 2-4 KB", CHANGELOGS / "changelog-medium.jsonl", 2000, 4000),
)
START_WITHIN = 300.0
# The rows with and without the dictionary alternate over this many chunks of the test
# texts (ABBA order): ZSTD's, and LOSSLESS's (a few minutes each).
ZSTD_CHUNKS = 8
LOSSLESS_CHUNKS = 4
# ZSTD rows code the test texts this many times (sizes from the first): one pass of short
# records takes under a second, too little to tell two rows' speeds apart.
ZSTD_ROUNDS = 5
# Dictionary sizes the in-process sweep trains (bytes).
SWEEP_SIZES = (65_536, 112_640, 262_144, 524_288, 1_048_576)


def split_rows(path: Path, low: int, high: int) -> tuple[list[str], list[str]]:
    """(train, test) texts: by the row's "split", else by a hash of its document. The
    bounds pick the test texts; training takes every size, as a user would train on a
    sample of the whole corpus."""
    train: list[str] = []
    test: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        text = row["text"]
        split = row.get("split")
        if split is None:
            doc = str(row.get("source", row.get("id", text)))
            split = "test" if hashlib.sha256(doc.encode()).digest()[0] < 77 else "train"
        if split != "test":
            train.append(text)
            continue
        size = len(text.encode("utf-8"))
        if (low and size < low) or (high and size > high):
            continue
        test.append(text)
    return train, test


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(folder: Path, model: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "LLMC_MONITORING__PROMETHEUS_PORT": "0",
        "LLMC_DICTIONARIES__PATH": str(folder),
        "LLMC_MODEL__EMBEDDED__PRELOAD": "true" if model else "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcompress.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_WITHIN
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"llmc serve did not listen on {port}") from None
            time.sleep(0.1)


def stream(client: Client, texts: list[str], mode: str, dictionary: str | None) -> dict[str, Any]:
    items = [BatchItem(str(i), t, mode=mode, dictionary=dictionary) for i, t in enumerate(texts)]
    start = time.perf_counter()
    envelopes: dict[str, int] = {}
    errors: list[str] = []
    named = degraded = hits = 0
    for answer in client.compress_stream(items, timeout=3600):
        if answer.result is None:
            errors.append(f"{answer.id}: {answer.error}")
            continue
        envelopes[answer.id] = len(answer.result.envelope)
        named += bool(answer.result.stats.dictionary)
        degraded += answer.result.stats.degraded
        hits += answer.result.stats.cache_hit
    seconds = time.perf_counter() - start
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "items": len(texts),
        "seconds": seconds,
        "items_per_s": len(texts) / seconds,
        "bytes_per_s": text_bytes / seconds,
        "ratio": text_bytes / max(sum(envelopes.values()), 1),
        "envelope_bytes": sum(envelopes.values()),
        "text_bytes": text_bytes,
        "named_dictionary": named,
        "cache_hits": hits,
        "degraded": degraded,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def merge(parts: list[dict[str, Any]], measured: int) -> dict[str, Any]:
    """One row from the rows of its chunks: sizes from the first `measured` (the test texts
    themselves), speed from them all."""
    first = parts[:measured]
    items = sum(p["items"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    text_bytes = sum(p["text_bytes"] for p in first)
    envelope_bytes = sum(p["envelope_bytes"] for p in first)
    errors = [e for p in parts for e in p["errors"]]
    return {
        "items": sum(p["items"] for p in first),
        "coded": items,
        "seconds": seconds,
        "items_per_s": items / seconds,
        "bytes_per_s": sum(p["text_bytes"] for p in parts) / seconds,
        "ratio": text_bytes / max(envelope_bytes, 1),
        "envelope_bytes": envelope_bytes,
        "text_bytes": text_bytes,
        "named_dictionary": sum(p["named_dictionary"] for p in first),
        "cache_hits": sum(p["cache_hits"] for p in parts),
        "degraded": sum(p["degraded"] for p in parts),
        "errors": errors[:5],
        "error_count": sum(p["error_count"] for p in parts),
        "chunks": measured,
        "rounds": len(parts) // max(measured, 1),
    }


def paired_rows(
    client: Client, texts: list[str], mode: str, dictionary: str, chunks: int, rounds: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`mode` without and with the dictionary, in turns over `chunks` chunks (ABBA), `rounds`
    times: after the first, each text ends in " (n)", so it is new to the cache again."""
    size = -(-len(texts) // chunks)
    starts = range(0, len(texts), size)
    without: list[dict[str, Any]] = []
    with_it: list[dict[str, Any]] = []
    for n in range(rounds):
        batch = texts if n == 0 else [f"{text} ({n})" for text in texts]
        for i, start in enumerate(starts):
            order = [(without, None), (with_it, dictionary)]
            for parts, name in order if (i + n) % 2 == 0 else order[::-1]:
                parts.append(stream(client, batch[start : start + size], mode, name))
    return merge(without, len(starts)), merge(with_it, len(starts))


def sweep(train: list[str], test: list[str], sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """In process, with the server's own trainer, codec and envelope: the envelope ratio of
    the test texts with a dictionary of each size, against none; and zstd's own frames
    for the same (as `zstd -D` writes them at the codec's level for each text's size:
    magic, dictionary id, no checksum, no envelope)."""
    samples = [t.encode("utf-8") for t in train]
    data = [t.encode("utf-8") for t in test]
    total = sum(len(d) for d in data)
    codec = ZstdCodec()

    def envelopes(dictionary: Dictionary | None) -> tuple[int, float]:
        best, coded = float("inf"), 0
        for _ in range(3):
            start = time.perf_counter()
            coded = sum(
                len(
                    seal(
                        d,
                        codec.encode_now(d, dictionary).envelope,
                        dictionary=dictionary.short_id if dictionary else 0,
                    )
                )
                for d in data
            )
            best = min(best, time.perf_counter() - start)
        return coded, best / max(len(data), 1) * 1e6

    def raw(trained: bytes | None) -> int:
        # Each text at the level the codec picks for its size (and the dictionary).
        comps: dict[int, zstandard.ZstdCompressor] = {}
        total = 0
        for d in data:
            level = codec.level_for(len(d), trained is not None)
            if level not in comps:
                comps[level] = zstandard.ZstdCompressor(
                    level=level,
                    dict_data=zstandard.ZstdCompressionDict(trained) if trained else None,
                )
            total += len(comps[level].compress(d))
        return total

    plain_bytes, plain_us = envelopes(None)
    plain_raw = raw(None)
    rows = []
    for size in sizes:
        start = time.perf_counter()
        trained = train_zstd(samples, size)
        seconds = time.perf_counter() - start
        env_bytes, us = envelopes(Dictionary(zstd=trained))
        raw_bytes = raw(trained)
        rows.append(
            {
                "size_bound": size,
                "zstd_bytes": len(trained),
                "training_seconds": seconds,
                "ratio": total / env_bytes,
                "gain": plain_bytes / env_bytes,
                "us_per_item": us,
                "plain_ratio": total / plain_bytes,
                "plain_us_per_item": plain_us,
                "raw_gain": plain_raw / raw_bytes,
            }
        )
    return rows


def brotli_row(texts: list[str]) -> dict[str, Any]:
    data = [t.encode("utf-8") for t in texts]
    start = time.perf_counter()
    out = sum(len(brotli.compress(d, quality=11)) for d in data)
    seconds = time.perf_counter() - start
    total = sum(len(d) for d in data)
    return {
        "items": len(data),
        "seconds": seconds,
        "items_per_s": len(data) / seconds,
        "bytes_per_s": total / seconds,
        "ratio": total / out,
        "text_bytes": total,
        "envelope_bytes": out,
    }


def measure_corpus(
    client: Client,
    name: str,
    path: Path,
    low: int,
    high: int,
    lossless: int,
    sizes: tuple[int, ...] = SWEEP_SIZES,
) -> dict[str, Any]:
    train, test = split_rows(path, low, high)
    start = time.perf_counter()
    info = client.train_dictionary(f"bench-{len(train)}", train, timeout=3600)
    trained_in = time.perf_counter() - start
    rows: dict[str, Any] = {}
    rows["ZSTD"], rows["ZSTD with the dictionary"] = paired_rows(
        client, test, "zstd", info.id, ZSTD_CHUNKS, ZSTD_ROUNDS
    )
    rows["brotli -11 (raw, in process)"] = brotli_row(test)
    few: list[str] = []
    for text in test:  # the first test texts up to `lossless` bytes: the model is slow here
        if sum(len(t.encode("utf-8")) for t in few) >= lossless:
            break
        few.append(text)
    if few:
        rows["LOSSLESS"], rows["LOSSLESS with the primer"] = paired_rows(
            client, few, "lossless", info.id, LOSSLESS_CHUNKS
        )
    return {
        "name": name,
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "bounds": [low, high],
        "train_texts": len(train),
        "test_texts": len(test),
        "mean_test_bytes": sum(len(t.encode()) for t in test) / max(len(test), 1),
        "dictionary": {
            "id": info.id,
            "zstd_bytes": info.zstd_bytes,
            "primer_bytes": info.primer_bytes,
            "samples": info.samples,
            "sample_bytes": info.sample_bytes,
            "training_seconds": info.training_seconds,
            "train_call_seconds": trained_in,
        },
        "rows": rows,
        "sizes": sweep(train, test, sizes),
    }


def measure(
    corpora: list[tuple[str, Path, int, int]] | None = None,
    lossless: int = 30_000,
    sizes: tuple[int, ...] = SWEEP_SIZES,
) -> dict[str, Any]:
    corpora = list(CORPORA) if corpora is None else corpora
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="llmc-bench-dicts-") as folder:
        proc, address = start_server(Path(folder), model=lossless > 0)
        try:
            with Client(address, timeout=3600) as client:
                if lossless:
                    # The model loads on the first LOSSLESS item: not in any row's time.
                    client.compress("warm up the model " * 4, "lossless")
                results = [
                    measure_corpus(client, name, path, low, high, lossless, sizes)
                    for name, path, low, high in corpora
                ]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "available": True,
        "commit": _commit(),
        "loadavg_start": list(load0),
        "loadavg_end": list(os.getloadavg()),
        "lossless_bytes": lossless,
        "sizes": list(sizes),
        "corpora": results,
    }


def table(result: dict[str, Any]) -> str:
    out = []
    for c in result["corpora"]:
        d = c["dictionary"]
        rows = c["rows"]
        out += [
            f"### {c['name']}",
            "",
            f"`{c['file']}`: trained on {c['train_texts']:,} texts, tested on "
            f"{c['test_texts']:,} others (mean {c['mean_test_bytes']:,.0f} B). Dictionary "
            f"{d['id'][:8]}: zstd {d['zstd_bytes']:,} B, primer {d['primer_bytes']:,} B, "
            f"trained in {d['training_seconds']:.2f} s ({d['train_call_seconds']:.2f} s with "
            "the upload).",
            "",
            "| row | texts | ratio | items/s | text KB/s | vs the row without |",
            "|---|---|---|---|---|---|",
        ]
        pairs = {
            "ZSTD with the dictionary": "ZSTD",
            "LOSSLESS with the primer": "LOSSLESS",
        }
        for label, r in rows.items():
            versus = ""
            base = rows.get(pairs.get(label, ""))
            if base:
                versus = (
                    f"ratio **{r['ratio'] / base['ratio']:.2f}x**, items/s "
                    f"**{r['items_per_s'] / base['items_per_s']:.0%}**"
                )
            errors = f" ({r['error_count']} errors)" if r.get("error_count") else ""
            out.append(
                f"| {label}{errors} | {r['items']:,} | {r['ratio']:.3f} | "
                f"{r['items_per_s']:,.1f} | {r['bytes_per_s'] / 1024:,.1f} | {versus} |"
            )
        out.append("")
        if c.get("sizes"):
            s0 = c["sizes"][0]
            out += [
                f"Dictionary size, in process (the server's trainer, codec and envelope; "
                f"ZSTD alone: ratio {s0['plain_ratio']:.3f}, {s0['plain_us_per_item']:.1f} "
                "µs a text):",
                "",
                "| size bound | dictionary B | trained in | ratio | vs ZSTD | µs a text "
                "| zstd's own frames, vs zstd |",
                "|---|---|---|---|---|---|---|",
            ]
            for s in c["sizes"]:
                out.append(
                    f"| {s['size_bound']:,} | {s['zstd_bytes']:,} | "
                    f"{s['training_seconds']:.2f} s | {s['ratio']:.3f} | {s['gain']:.3f}x | "
                    f"{s['us_per_item']:.1f} | {s['raw_gain']:.3f}x |"
                )
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dictionaries", description=__doc__)
    parser.add_argument("--corpus", type=Path, action="append", help="a JSONL corpus instead")
    parser.add_argument(
        "--lossless",
        type=int,
        default=30_000,
        metavar="BYTES",
        help="LOSSLESS rows code the first test texts up to this many bytes (0: none)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=list(SWEEP_SIZES),
        metavar="BYTES",
        help="dictionary sizes the in-process sweep trains (none: no sweep)",
    )
    parser.add_argument("--out", type=Path, help="write dictionaries.{md,json} here")
    args = parser.parse_args(argv)
    corpora = [(p.name, p.resolve(), 0, 0) for p in args.corpus] if args.corpus else list(CORPORA)
    result = measure(corpora, args.lossless, tuple(args.sizes))
    command = "python -m bench.dictionaries" + "".join(f" --corpus {p}" for p in args.corpus or [])
    if tuple(args.sizes) != SWEEP_SIZES:
        command += " --sizes" + "".join(f" {size}" for size in args.sizes)
    text = "\n".join(
        [
            "# Corpus dictionaries",
            "",
            f"`{command} --lossless {args.lossless}`, commit {result['commit']}, load "
            f"{result['loadavg_start'][0]:.1f} -> {result['loadavg_end'][0]:.1f}, "
            f"{os.cpu_count()} cores.",
            "",
            (__doc__ or "").split("\n\n")[1].replace("\n", " "),
            "",
            table(result),
        ]
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "dictionaries.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "dictionaries.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
