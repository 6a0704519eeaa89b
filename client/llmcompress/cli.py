"""`llmc`: serve, compress, reconstruct and inspect from the shell.

Every command that talks to a server takes --server (default $LLMC_SERVER or
127.0.0.1:50051), --token (default $LLMC_TOKEN) and --tls-ca/--tls-cert/--tls-key,
and prints a one-line summary to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from ._client import DEFAULT_TARGET, Client
from ._errors import LLMCompressError, Unauthenticated, Unavailable
from ._options import TLS

EPILOG = """examples:
  llmc serve                                  # embedded model, 127.0.0.1:50051
  llmc compress --mode zstd notes.txt -o notes.llmc
  echo "hello world" | llmc compress --mode lossless - > hello.llmc
  llmc reconstruct notes.llmc > notes.txt
  llmc stats                                  # per-stage p50/p95/p99, slowest stage
  llmc warm corpus.jsonl --mode lossless      # pre-fill the cache, with a progress bar
  llmc bench --server 127.0.0.1:50051 --profile quick --out bench-out
  llmc batch corpus.jsonl -o out.jsonl --mode zstd --resume
  llmc unbatch out.jsonl -o texts.jsonl
  LLMC_TOKEN=... llmc stats --server llmc.example:50051 --tls-ca ca.pem
"""
TOKEN_ENV = "LLMC_TOKEN"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--token and --tls-*, for every command that talks to a server (and `llmc bench`)."""
    group = parser.add_argument_group("security")
    group.add_argument(
        "--token",
        help=f"bearer token for a server with token auth (default: ${TOKEN_ENV}; prefer the "
        "variable: other users of this machine can see command lines)",
    )
    group.add_argument(
        "--tls-ca", metavar="FILE", help="CA certificate (PEM) that signed the server's; uses TLS"
    )
    group.add_argument(
        "--tls-cert", metavar="FILE", help="client certificate (PEM) for mutual TLS; uses TLS"
    )
    group.add_argument("--tls-key", metavar="FILE", help="the client certificate's key (PEM)")
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the server's certificate against, when --server is not it",
    )


def connection_problem(args: argparse.Namespace) -> str | None:
    """A usage error in the connection options, else None."""
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together (mutual TLS needs both)"
    if args.tls_server_name and not (args.tls_ca or args.tls_cert):
        return "--tls-server-name needs TLS: give --tls-ca (or --tls-cert and --tls-key)"
    return None


def connection(args: argparse.Namespace) -> tuple[TLS | None, str | None]:
    """(TLS, token) from the connection options; the token is never printed."""
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TLS.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return tls, args.token or os.environ.get(TOKEN_ENV) or None


def _connect(args: argparse.Namespace) -> Client:
    tls, token = connection(args)
    return Client(args.server, timeout=args.timeout, tls=tls, token=token)


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

    from llmcompress_server.app import serve
    from llmcompress_server.config import ConfigError, load_config
    from llmcompress_server.telemetry import configure_logging

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
    configure_logging(config.monitoring)
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
    with _connect(args) as client:
        result = client.compress(text, args.mode, verify=args.verify)
    out = _open_output(args.output)
    out.write(result.envelope)
    out.flush()
    if out is not sys.stdout.buffer:
        out.close()
    s = result.stats
    extra = f", degraded: {s.reason}" if s.degraded else (f" ({s.reason})" if s.reason else "")
    print(
        f"{s.mode.value}: {_human(s.original_bytes)} -> "
        f"{_human(s.compressed_bytes)}, ratio {s.ratio:.2f}x, "
        f"{time.perf_counter() - t0:.2f}s{extra}",
        file=sys.stderr,
    )
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    envelope = _read_input(args.input)
    t0 = time.perf_counter()
    with _connect(args) as client:
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
    with _connect(args) as client:
        stats = client.stats(args.window)
    if not stats.stages:
        print(f"no requests in the last {stats.window_seconds:.0f}s")
        return 0
    print(f"per-stage latency over the last {stats.window_seconds:.0f}s (ms):")
    print(
        f"  {'stage':<22}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'self p95':>10}"
        f"{'total s':>10}"
    )
    for s in stats.stages:
        print(
            f"  {s.stage:<22}{s.count:>8}{s.p50 * 1e3:>10.2f}{s.p95 * 1e3:>10.2f}"
            f"{s.p99 * 1e3:>10.2f}{s.self_p95 * 1e3:>10.2f}{s.total_seconds:>10.2f}"
        )
    print(
        f"slowest stage (largest p95 of its own time, nested stages excluded): "
        f"{stats.slowest_stage}"
    )
    for tier in stats.cache:
        line = f"cache {tier.tier}: hits {tier.hits}, misses {tier.misses}, "
        line += f"hit ratio {tier.hit_ratio:.1%}"
        if tier.tier != "redis":
            line += f", size {tier.size}/{tier.max_size}"
        if tier.max_bytes:
            line += f", {_human(tier.bytes)}/{_human(tier.max_bytes)}"
        if tier.tier != "total":
            line += f", avg lookup {tier.avg_lookup_seconds * 1e3:.3f} ms"
        if tier.tier == "redis":
            line += f", errors {tier.errors}" + ("" if tier.available else ", UNAVAILABLE")
        print(line)
    return 0


def _read_corpus(path: str) -> list[tuple[str, str]]:
    """(id, text) pairs from JSONL; a bad line is an error naming the line."""
    import json

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


def cmd_warm(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        items = _read_corpus(args.input)
    except ValueError as exc:
        print(f"llmc warm: {exc}", file=sys.stderr)
        return 2
    cached = computed = failed = 0
    t0 = time.perf_counter()
    with (
        _connect(args) as client,
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


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    # The harness is the source checkout's bench/ package, next to client/; it is
    # not part of the installed client.
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "run.py").is_file():
        print(
            "llmc bench: the harness (bench/) comes with a source checkout of llmcompress; "
            "run `make bench` or `llmc bench` from an editable install of one",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    harness = importlib.import_module("bench.run")
    parser = argparse.ArgumentParser(
        prog="llmc bench",
        description="Benchmark a server (--server HOST:PORT) or an in-process one: ratio, "
        "latency, throughput and exactness per mode and text size, beside zstd -19, "
        "brotli -11 and a bare gRPC echo. Writes report.md, results.json and PNG plots.",
    )
    harness.add_arguments(parser)
    parser.set_defaults(out=Path("llmc-bench"))
    code: int = harness.execute(parser.parse_args(args.bench_args))
    return code


def cmd_batch(args: argparse.Namespace) -> int:
    from itertools import islice

    from tqdm import tqdm

    from ._batch_files import (
        CorpusError,
        count_lines,
        error_line,
        prepare_resume,
        read_corpus,
        result_line,
    )
    from ._results import Progress

    src, out = Path(args.input), Path(args.output)
    if out.exists() and out.stat().st_size and not args.resume:
        print(
            f"llmc batch: {out} exists; pass --resume to continue it, or remove it", file=sys.stderr
        )
        return 2
    resume = prepare_resume(out) if args.resume else None
    skip = resume.done if resume else set()
    if resume and (resume.torn_bytes or resume.failed_dropped):
        print(
            f"llmc batch: {out}: cut a torn last line ({resume.torn_bytes} B), "
            f"trying {resume.failed_dropped} failed items again",
            file=sys.stderr,
        )
    bar = tqdm(
        total=count_lines(src),
        initial=len(skip),
        unit="item",
        desc="llmc batch",
        disable=True if args.no_progress else None,  # None: only on a terminal
    )
    last = Progress(0, 0, 0, 0, 0, 0.0)

    def on_progress(p: Progress) -> None:
        nonlocal last
        last = p
        bar.update(1)
        bar.set_postfix(ratio=f"{p.ratio:.2f}x", errors=p.errors, refresh=False)

    failures: list[str] = []  # the first few, for the summary
    try:
        with (
            src.open(encoding="utf-8") as corpus,
            out.open("a", encoding="utf-8") as sink,
            _connect(args) as client,
        ):
            items = read_corpus(corpus, str(src), skip)
            if args.limit is not None:
                items = islice(items, args.limit)
            for answer in client.compress_stream(
                items, mode=args.mode, in_order=args.in_order, on_progress=on_progress
            ):
                if answer.result is not None:
                    sink.write(result_line(answer.id, answer.result))
                elif answer.error is not None:
                    sink.write(error_line(answer.id, answer.error))
                    if len(failures) < 10:
                        failures.append(f"{answer.id}: {answer.error}")
                # Flushed per item: a killed run loses at most the line being written.
                sink.flush()
    except CorpusError as exc:
        print(
            f"llmc batch: {exc} (items before it are in {out}; fix it and --resume)",
            file=sys.stderr,
        )
        return 2
    except LLMCompressError:
        print(
            f"llmc batch: stopped after {last.done} items; {out} keeps them, "
            "run again with --resume to finish",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    print(
        f"llmc batch: {last.done} items in {last.elapsed_seconds:.1f}s "
        f"({last.items_per_second:.1f} items/s), {len(skip)} already done, "
        f"{last.errors} failed; ratio {last.ratio:.2f}x "
        f"({_human(last.original_bytes)} -> {_human(last.compressed_bytes)})",
        file=sys.stderr,
    )
    if last.errors:
        for line in failures:
            print(f"  failed {line}", file=sys.stderr)
        if last.errors > len(failures):
            print(
                f'  ... and {last.errors - len(failures)} more (lines with "error" in {out})',
                file=sys.stderr,
            )
        print("  run again with --resume to retry the failed items", file=sys.stderr)
        return 1
    return 0


def cmd_unbatch(args: argparse.Namespace) -> int:
    import json
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from ._batch_files import CorpusError, read_out
    from ._results import ReconstructResult

    src = Path(args.input)
    written = missing = failed = 0
    with (
        src.open(encoding="utf-8") as lines,
        _open_text_output(args.output) as sink,
        _connect(args) as client,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        # A bounded window of calls in flight, answered in input order.
        window: deque[tuple[str, Future[ReconstructResult]]] = deque()

        def drain(keep: int) -> None:
            nonlocal written, failed
            while len(window) > keep:
                ident, future = window.popleft()
                try:
                    result = future.result()
                except LLMCompressError as exc:
                    failed += 1
                    print(f"llmc unbatch: {ident}: {exc}", file=sys.stderr)
                    continue
                sink.write(json.dumps({"id": ident, "text": result.text, "exact": result.exact}))
                sink.write("\n")
                written += 1

        try:
            for line in read_out(lines, str(src)):
                if line.envelope is None:
                    missing += 1
                    print(f"llmc unbatch: {line.id}: no envelope ({line.error})", file=sys.stderr)
                    continue
                window.append((line.id, pool.submit(client.reconstruct, line.envelope)))
                drain(args.jobs * 2)
            drain(0)
        except CorpusError as exc:
            print(f"llmc unbatch: {exc}", file=sys.stderr)
            return 2
    print(
        f"llmc unbatch: {written} texts written, {failed} failed, {missing} had no envelope",
        file=sys.stderr,
    )
    return 1 if failed or missing else 0


def _open_text_output(path: str | None) -> contextlib.AbstractContextManager[TextIO]:
    if path is None or path == "-":
        return contextlib.nullcontext(sys.stdout)
    return open(path, "w", encoding="utf-8")


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
        add_connection_arguments(p)

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

    p = sub.add_parser(
        "warm",
        help="pre-compress a corpus so its items are cache hits",
        description="Compress every item of a JSONL corpus (one {id, text} object a line) "
        "through the server's cache, with a progress bar.",
    )
    p.add_argument("input", metavar="FILE.jsonl", help="corpus: JSON lines with id and text")
    p.add_argument(
        "--mode",
        choices=["zstd", "lossless", "semantic", "default"],
        default="default",
        help="the mode later requests will ask for (default: the server's default)",
    )
    client_opts(p)
    p.set_defaults(func=cmd_warm)

    # Options are parsed by the harness itself (`llmc bench --help` lists them).
    p = sub.add_parser("bench", help="benchmark a server and write a report", add_help=False)
    p.set_defaults(func=cmd_bench, server="(see llmc bench --help)")

    p = sub.add_parser(
        "batch",
        help="compress a JSONL corpus through BatchCompress",
        description='Stream a JSONL corpus ({"id": ..., "text": ...} per line) through '
        "BatchCompress and write one JSON line per item: id, base64 envelope and stats, "
        "or id and error. Exits 1 when any item failed.",
    )
    p.add_argument("input", metavar="IN.jsonl", help="corpus, one JSON object per line")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="results")
    p.add_argument("--mode", choices=["zstd", "lossless", "semantic", "default"], default="default")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT: skip ids it holds an envelope for, retry its failed ids, "
        "cut a torn last line",
    )
    p.add_argument("--in-order", action="store_true", help="write results in input order")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N items this run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    client_opts(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser(
        "unbatch",
        help="reconstruct the texts of a `llmc batch` output",
        description="Reconstruct every envelope of a `llmc batch` output and write "
        '{"id": ..., "text": ..., "exact": ...} per line, in the same order.',
    )
    p.add_argument("input", metavar="OUT.jsonl", help="a `llmc batch` output")
    p.add_argument("-o", "--output", metavar="TEXTS.jsonl", help="texts (default: stdout)")
    p.add_argument("--jobs", type=int, default=4, help="calls in flight (default: %(default)s)")
    client_opts(p)
    p.set_defaults(func=cmd_unbatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":  # the harness parses its own options
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    problem = connection_problem(args) if hasattr(args, "tls_cert") else None
    if problem:
        parser.error(problem)
    try:
        code: int = args.func(args)
    except Unavailable as exc:
        print(
            f"llmc: cannot reach a server at {args.server} ({exc.details}); "
            "start one with `llmc serve` or pass --server",
            file=sys.stderr,
        )
        return 3
    except Unauthenticated as exc:
        print(
            f"llmc {args.command}: {exc}; pass a token with --token or the {TOKEN_ENV} "
            "environment variable",
            file=sys.stderr,
        )
        return 1
    except LLMCompressError as exc:
        print(f"llmc {args.command}: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"llmc {args.command}: {exc.filename}: no such file", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
