"""`llmc stats` and `llmc warm`: where a server's time goes, and filling its cache."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .._results import ServerStats
from ..connect import add_server_arguments, connect
from .envelopes import MODES
from .files import human


def stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        found = client.stats(args.window)
    if not found.stages:
        print(f"no requests in the last {found.window_seconds:.0f}s")
        _print_usage(found)
        return 0
    print(f"per-stage latency over the last {found.window_seconds:.0f}s (ms):")
    print(
        f"  {'stage':<22}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'self p95':>10}"
        f"{'total s':>10}"
    )
    for s in found.stages:
        print(
            f"  {s.stage:<22}{s.count:>8}{s.p50 * 1e3:>10.2f}{s.p95 * 1e3:>10.2f}"
            f"{s.p99 * 1e3:>10.2f}{s.self_p95 * 1e3:>10.2f}{s.total_seconds:>10.2f}"
        )
    print(
        f"slowest stage (largest p95 of its own time, nested stages excluded): "
        f"{found.slowest_stage}"
    )
    for tier in found.cache:
        line = f"cache {tier.tier}: hits {tier.hits}, misses {tier.misses}, "
        line += f"hit ratio {tier.hit_ratio:.1%}"
        if tier.tier != "redis":
            line += f", size {tier.size}/{tier.max_size}"
        if tier.max_bytes:
            line += f", {human(tier.bytes)}/{human(tier.max_bytes)}"
        if tier.tier != "total":
            line += f", avg lookup {tier.avg_lookup_seconds * 1e3:.3f} ms"
        if tier.tier == "redis":
            line += f", errors {tier.errors}" + ("" if tier.available else ", UNAVAILABLE")
        print(line)
    _print_usage(found)
    return 0


def _print_usage(found: ServerStats) -> None:
    """Tokens and cost per model since the server started, and the saving against the
    server's reference model (`cost.reference`)."""
    if not found.usage:
        print("model calls since start: none")
        return
    print("model calls since start (tokens as each backend counted them; cost from cost.prices):")
    print(f"  {'backend':<10}{'model':<30}{'operation':<12}{'calls':>8}{'input':>12}"
          f"{'output':>10}{'cost':>12}")  # fmt: skip
    for u in found.usage:
        print(
            f"  {u.backend:<10}{u.model[:29]:<30}{u.operation:<12}{u.calls:>8}"
            f"{u.input_tokens:>12}{u.output_tokens:>10}{u.cost:>12.6f}"
        )
    print(f"total cost {found.cost:.6f}")
    if not found.cost_reference:
        print("saving: no reference model (set cost.reference to a priced model)")
        return
    if found.cost_saving is None:
        print(f"saving against {found.cost_reference}: no chat calls yet (it compares chat calls)")
        return
    chat = sum(u.cost for u in found.usage if u.operation == "chat")
    print(
        f"saving against {found.cost_reference}: {found.cost_saving:.1%} (chat calls: "
        f"{chat:.6f} here, {found.reference_cost:.6f} for the same tokens at its prices)"
    )


def _read_corpus(path: str) -> list[tuple[str, str]]:
    """(id, text) pairs from JSONL; a bad line is an error naming the line."""
    items: list[tuple[str, str]] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            items.append((str(item["id"]), str(item["text"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}:{number}: expected a JSON object with id and text ({exc})"
            ) from None
    return items


def warm(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        items = _read_corpus(args.input)
    except ValueError as exc:
        print(f"llmc warm: {exc}", file=sys.stderr)
        return 2
    cached = computed = failed = 0
    t0 = time.perf_counter()
    with (
        connect(args) as client,
        tqdm(total=len(items), unit="item", desc="warming", file=sys.stderr) as bar,
    ):
        for answer in client.compress_stream(items, mode=args.mode, timeout=args.timeout):
            if answer.error is not None:
                failed += 1
                bar.write(f"{answer.id}: {answer.error.details}", file=sys.stderr)
            elif answer.result is not None and answer.result.stats.cache_hit:
                cached += 1
            else:
                computed += 1
            bar.update()
        after = client.stats()
    elapsed = time.perf_counter() - t0
    print(
        f"warmed {len(items)} items in {elapsed:.1f}s: {computed} compressed, "
        f"{cached} already cached, {failed} failed",
        file=sys.stderr,
    )
    for tier in after.cache:
        if tier.tier == "total":
            print(
                f"server cache now: {tier.size}/{tier.max_size} entries, "
                f"hits {tier.hits}, misses {tier.misses} ({tier.hit_ratio:.1%} hit ratio)",
                file=sys.stderr,
            )
    return 1 if failed else 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "stats",
        help="per-stage latency, the slowest stage, tokens and cost",
        description="Show per-stage p50/p95/p99 over a recent window and name the slowest "
        "stage; then tokens and cost per model since the server started, and the saving "
        "against the server's reference model (cost.reference).",
    )
    p.add_argument(
        "--window", type=float, default=0.0, help="window in seconds (default: server's, 300)"
    )
    add_server_arguments(p)
    p.set_defaults(func=stats)

    p = commands.add_parser(
        "warm",
        help="pre-compress a corpus so its items are cache hits",
        description="Compress every item of a JSONL corpus (one {id, text} object a line) "
        "through the server's cache, with a progress bar.",
    )
    p.add_argument("input", metavar="FILE.jsonl", help="corpus: JSON lines with id and text")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="default",
        help="the mode later requests will ask for (default: the server's default)",
    )
    add_server_arguments(p)
    p.set_defaults(func=warm)
