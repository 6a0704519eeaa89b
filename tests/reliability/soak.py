"""Sustained overload: `llmc serve` held at twice its admission capacity for minutes.

    .venv/bin/python -m tests.reliability.soak --minutes 10        (make soak)

One `llmc serve` process with `performance.max_queue` = Q admits Q requests (queued
+ running); this process keeps 2Q in flight: unary Compress and Reconstruct callers
and BatchCompress streams whose windows hold the rest. Texts are distinct corpus
mixes of 40-150 KB (zstd -19 in a worker thread: tens of milliseconds each, holding
the call's admission slot), so the server stays full. Passes when:
- every outcome is a documented one: OK, or RESOURCE_EXHAUSTED with a retry hint;
- nothing is lost: every refused call succeeds when retried after its hint, every
  stream item is answered exactly once, every envelope reconstructs to its text;
- the server's RSS grows by at most 50 MB from the end of the warm-up to the end.
Prints one JSON report (and writes it with --out); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from llmcompress import AsyncClient, LLMCompressError, Mode, ResourceExhausted, RetryPolicy

from ..conftest import load_corpus
from .processes import Serve

RSS_GROWTH_LIMIT = 50 * 2**20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Texts:
    """Distinct texts (a numbered mix of corpus passages), so the cache cannot answer."""

    def __init__(self, seed: int) -> None:
        self.passages = [item["text"] for item in load_corpus()]
        self.rng = random.Random(seed)
        self.n = 0

    def next(self) -> str:
        self.n += 1
        # Above the server's 32 KB inline threshold: each call holds its admission slot
        # while zstd runs in a thread, as a model call would.
        size = self.rng.choice([40_000, 60_000, 90_000, 150_000])
        parts, total = [f"soak text {self.n}"], 0
        while total < size:
            passage = self.rng.choice(self.passages)
            parts.append(passage)
            total += len(passage)
        return "\n".join(parts)[:size]


@dataclass
class Tally:
    in_flight: int = 0  # unary calls awaiting the server now
    in_flight_samples: list[int] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)  # per kind, every attempt
    done: Counter[str] = field(default_factory=Counter)  # logical requests finished
    refused: Counter[str] = field(default_factory=Counter)  # RESOURCE_EXHAUSTED, hinted
    unhinted: int = 0  # RESOURCE_EXHAUSTED without a retry hint
    other: Counter[str] = field(default_factory=Counter)  # any other status: a failure
    lost: list[str] = field(default_factory=list)  # wrong or missing answers
    stream_items: int = 0


async def retried(tally: Tally, kind: str, call: Any) -> Any:
    """`call()` until it is admitted; each refusal must carry a retry hint, honoured."""
    while True:
        tally.calls[kind] += 1
        tally.in_flight += 1
        try:
            result = await call()
        except ResourceExhausted as exc:
            tally.in_flight -= 1
            tally.refused[kind] += 1
            if exc.retry_after is None:
                tally.unhinted += 1
            await asyncio.sleep(exc.retry_after or 0.5)
            continue
        except BaseException:
            tally.in_flight -= 1
            raise
        tally.in_flight -= 1
        tally.done[kind] += 1
        return result


async def compressor(
    client: AsyncClient, texts: Texts, tally: Tally, stop: float, made: list[tuple[str, bytes]]
) -> None:
    while time.monotonic() < stop:
        text = texts.next()
        result = await retried(tally, "compress", lambda t=text: client.compress(t, Mode.ZSTD))
        if len(made) < 256:
            made.append((text, result.envelope))
        else:
            made[random.randrange(len(made))] = (text, result.envelope)


async def reconstructor(
    client: AsyncClient, tally: Tally, stop: float, made: list[tuple[str, bytes]]
) -> None:
    while time.monotonic() < stop:
        if not made:
            await asyncio.sleep(0.05)
            continue
        text, envelope = random.choice(made)
        back = await retried(tally, "reconstruct", lambda e=envelope: client.reconstruct(e))
        if not (back.exact and back.text == text):
            tally.lost.append("a Reconstruct gave back another text")


async def streamer(client: AsyncClient, texts: Texts, tally: Tally, stop: float) -> None:
    """BatchCompress streams of 64 items, one after another, until `stop`."""
    batch = 0
    while time.monotonic() < stop:
        batch += 1
        sent = {f"{batch}-{i}": texts.next() for i in range(64)}

        async def items(s: dict[str, str] = sent) -> AsyncIterator[tuple[str, str]]:
            for pair in s.items():
                yield pair

        answered: Counter[str] = Counter()
        tally.calls["batch"] += 1
        async for answer in client.compress_stream(items(), mode=Mode.ZSTD):
            answered[answer.id] += 1
            tally.stream_items += 1
            if answer.error is not None:
                tally.other[f"batch item {answer.error.code.name}"] += 1
        if set(answered) != set(sent) or set(answered.values()) != {1}:
            tally.lost.append(f"stream {batch}: {len(answered)} of {len(sent)} ids answered")
        tally.done["batch"] += 1


async def sampler(
    pid: int, tally: Tally, samples: list[tuple[float, int]], stop: float, every: float
) -> None:
    """The server's RSS every `every` s; the unary calls in flight every 0.1 s."""
    start = next_rss = time.monotonic()
    while time.monotonic() < stop:
        if time.monotonic() >= next_rss:
            samples.append((time.monotonic() - start, rss_bytes(pid)))
            next_rss += every
        tally.in_flight_samples.append(tally.in_flight)
        await asyncio.sleep(0.1)
    samples.append((time.monotonic() - start, rss_bytes(pid)))


async def guarded(tally: Tally, work: Any) -> None:
    try:
        await work
    except LLMCompressError as exc:
        tally.other[exc.code.name] += 1
    except grpc.RpcError as exc:  # the client maps every status; this would be a bug
        tally.other[f"unmapped {exc}"] += 1


async def soak(args: argparse.Namespace, server: Serve) -> dict[str, Any]:
    q = args.max_queue
    tally, made, samples = Tally(), list[tuple[str, bytes]](), list[tuple[float, int]]()
    started = time.monotonic()
    stop = started + args.minutes * 60
    # Twice the admission capacity: unary callers, and 2 streams whose windows hold
    # the rest (the server admits each stream item in turn).
    unary = 2 * q - 2 * args.window
    compressors, reconstructors = (unary * 2) // 3, unary - (unary * 2) // 3
    no_retry = RetryPolicy(max_attempts=1)  # refusals are counted and retried here
    async with AsyncClient(server.address, retry=no_retry, timeout=120) as client:
        work = [
            *(compressor(client, Texts(i), tally, stop, made) for i in range(compressors)),
            *(reconstructor(client, tally, stop, made) for _ in range(reconstructors)),
            *(streamer(client, Texts(100 + i), tally, stop) for i in range(2)),
        ]
        await asyncio.gather(
            sampler(server.proc.pid, tally, samples, stop, args.sample_seconds),
            *(guarded(tally, w) for w in work),
        )
    elapsed = time.monotonic() - started
    warm = [rss for t, rss in samples if t <= args.warmup_minutes * 60]
    after = [rss for t, rss in samples if t > args.warmup_minutes * 60]
    base = warm[-1] if warm else samples[0][1]
    growth = (max(after) - base) if after else 0
    checks = {
        "only documented statuses": not tally.other and not tally.unhinted,
        "nothing lost": not tally.lost,
        "overloaded (calls were refused)": sum(tally.refused.values()) > 0,
        f"RSS growth <= {RSS_GROWTH_LIMIT >> 20} MB after warm-up": growth <= RSS_GROWTH_LIMIT,
    }
    return {
        "minutes": round(elapsed / 60, 2),
        "max_queue": q,
        "in_flight_offered": unary + 2 * args.window,
        # Unary calls at the server (callers waiting out a retry hint excluded), plus the
        # streams' windows, which stay full.
        "in_flight_mean": round(
            sum(tally.in_flight_samples) / max(1, len(tally.in_flight_samples)) + 2 * args.window,
            1,
        ),
        "callers": {"compress": compressors, "reconstruct": reconstructors, "streams": 2},
        "calls": dict(tally.calls),
        "done": dict(tally.done),
        "stream_items": tally.stream_items,
        "refused_with_hint": dict(tally.refused),
        "refused_without_hint": tally.unhinted,
        "refusal_ratio": round(sum(tally.refused.values()) / max(1, sum(tally.calls.values())), 3),
        "other_statuses": dict(tally.other),
        "lost": tally.lost[:10],
        "rss_mb": {
            "start": round(samples[0][1] / 2**20, 1),
            "end_of_warmup": round(base / 2**20, 1),
            "max_after_warmup": round(max(after or [base]) / 2**20, 1),
            "end": round(samples[-1][1] / 2**20, 1),
            "growth_after_warmup": round(growth / 2**20, 1),
        },
        "rss_samples_mb": " ".join(f"{t:.0f}s:{rss / 2**20:.0f}" for t, rss in samples),
        "loadavg": os.getloadavg(),
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--max-queue", type=int, default=8, help="the server's admission limit")
    parser.add_argument("--window", type=int, default=2, help="the server's stream window")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if 2 * args.max_queue <= 2 * args.window:
        parser.error("--max-queue must be larger than --window")
    with tempfile.TemporaryDirectory(prefix="llmc-soak-") as tmp:
        server = Serve(
            Path(tmp) / "server.log",
            LLMC_PERFORMANCE__MAX_QUEUE=str(args.max_queue),
            LLMC_PERFORMANCE__STREAM_WINDOW=str(args.window),
            # A bounded cache that the warm-up fills: its growth is not a leak.
            LLMC_CACHE__MAX_BYTES=str(16 * 2**20),
        )
        try:
            server.wait_serving()
            report = asyncio.run(soak(args, server))
        finally:
            server.stop()
            log_tail = server.tail(4000)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if not report["ok"]:
        print(f"soak FAILED; server log tail:\n{log_tail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
