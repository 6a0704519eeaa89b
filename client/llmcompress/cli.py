"""`llmc`: serve, compress, reconstruct and inspect from the shell.

Every command that talks to a server takes --server (default $LLMC_SERVER or
127.0.0.1:50051) and prints a one-line summary to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ._client import DEFAULT_TARGET, Client
from ._errors import LLMCompressError, Unavailable

EPILOG = """examples:
  llmc serve                                  # embedded model, 127.0.0.1:50051
  llmc compress --mode zstd notes.txt -o notes.llmc
  echo "hello world" | llmc compress --mode lossless - > hello.llmc
  llmc reconstruct notes.llmc > notes.txt
  llmc stats                                  # per-stage p50/p95/p99, slowest stage
"""


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _open_output(path: str | None) -> BinaryIO:
    if path is None or path == "-":
        return sys.stdout.buffer
    return open(path, "wb")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from llmcompress_server.app import serve
    from llmcompress_server.config import ConfigError, load_config

    overrides: dict[str, dict[str, object]] = {"server": {}}
    if args.host is not None:
        overrides["server"]["host"] = args.host
    if args.port is not None:
        overrides["server"]["port"] = args.port
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"llmc serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.monitoring.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:  # e.g. an unreadable TLS key or tokens file
        print(f"llmc serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmc serve: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    data = _read_input(args.input)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"llmc compress: input is not UTF-8 text ({exc})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with Client(args.server, timeout=args.timeout) as client:
        result = client.compress(text, args.mode, verify=args.verify)
    out = _open_output(args.output)
    out.write(result.envelope)
    out.flush()
    if out is not sys.stdout.buffer:
        out.close()
    s = result.stats
    from llmcompress_server.pb import compression_pb2 as pb

    extra = f", degraded: {s.reason}" if s.degraded else (f" ({s.reason})" if s.reason else "")
    print(
        f"{pb.Mode.Name(s.mode).removeprefix('MODE_').lower()}: {_human(s.original_bytes)} -> "
        f"{_human(s.compressed_bytes)}, ratio {s.ratio:.2f}x, "
        f"{time.perf_counter() - t0:.2f}s{extra}",
        file=sys.stderr,
    )
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    envelope = _read_input(args.input)
    t0 = time.perf_counter()
    with Client(args.server, timeout=args.timeout) as client:
        result = client.reconstruct(envelope)
    out = _open_output(args.output)
    data = result.text.encode("utf-8")
    out.write(data)
    out.flush()
    if out is not sys.stdout.buffer:
        out.close()
    print(
        f"{_human(len(envelope))} -> {_human(len(data))}, "
        f"{'exact' if result.exact else 'lossy'}, {time.perf_counter() - t0:.2f}s",
        file=sys.stderr,
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=args.timeout) as client:
        stats = client.stats(args.window)
    if not stats.stages:
        print(f"no requests in the last {stats.window_seconds:.0f}s")
        return 0
    print(f"per-stage latency over the last {stats.window_seconds:.0f}s (ms):")
    print(f"  {'stage':<22}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'total s':>10}")
    for s in stats.stages:
        print(
            f"  {s.stage:<22}{s.count:>8}{s.p50 * 1e3:>10.2f}{s.p95 * 1e3:>10.2f}"
            f"{s.p99 * 1e3:>10.2f}{s.total_seconds:>10.2f}"
        )
    print(f"slowest stage (largest p95): {stats.slowest_stage}")
    for tier in stats.cache:
        print(
            f"cache {tier.tier}: hits {tier.hits}, misses {tier.misses}, "
            f"hit ratio {tier.hit_ratio:.1%}, size {tier.size}/{tier.max_size}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmc",
        description="Compress text with language models through the llmcompress gRPC service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            default=os.environ.get("LLMC_SERVER", DEFAULT_TARGET),
            help="server address host:port (default: $LLMC_SERVER or %(default)s)",
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=600.0,
            help="deadline in seconds (default: %(default)s)",
        )

    p = sub.add_parser(
        "serve", help="run the gRPC server", description="Run the llmcompress gRPC server."
    )
    p.add_argument("--config", help="YAML config file (LLMC_SECTION__KEY env vars override it)")
    p.add_argument("--host", help="listen address (default: config server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: config server.port, 50051)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "compress",
        help="compress a file or stdin into an envelope",
        description="Compress text (UTF-8) and write the envelope (binary).",
    )
    p.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="input text, - for stdin (default)"
    )
    p.add_argument("-o", "--output", help="envelope file (default: stdout)")
    p.add_argument(
        "--mode",
        choices=["zstd", "lossless", "semantic", "default"],
        default="default",
        help="zstd: exact, no model; lossless: exact, model-coded; semantic: lossy summary; "
        "default: the server's default mode",
    )
    verify = p.add_mutually_exclusive_group()
    verify.add_argument(
        "--verify",
        dest="verify",
        action="store_true",
        default=None,
        help="LOSSLESS: decode before answering (server default: on)",
    )
    verify.add_argument("--no-verify", dest="verify", action="store_false")
    client_opts(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "reconstruct",
        help="turn an envelope back into text",
        description="Reconstruct the text held in an envelope.",
    )
    p.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="envelope file, - for stdin (default)"
    )
    p.add_argument("-o", "--output", help="text file (default: stdout)")
    client_opts(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "stats",
        help="per-stage latency and the slowest stage",
        description="Show per-stage p50/p95/p99 over a recent window and name the slowest stage.",
    )
    p.add_argument(
        "--window", type=float, default=0.0, help="window in seconds (default: server's, 300)"
    )
    client_opts(p)
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except Unavailable as exc:
        print(
            f"llmc: cannot reach a server at {args.server} ({exc.details}); "
            "start one with `llmc serve` or pass --server",
            file=sys.stderr,
        )
        return 3
    except LLMCompressError as exc:
        print(f"llmc {args.command}: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"llmc {args.command}: {exc.filename}: no such file", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
