"""`llmc compress` and `llmc reconstruct`: one text to one envelope file and back."""

from __future__ import annotations

import argparse
import sys
import time

from ..connect import add_server_arguments, connect
from .files import human, read_input, write_output

MODES = ["zstd", "lossless", "semantic", "default"]
TARGET_RATIO_HELP = (
    "SEMANTIC: the ratio to aim for (above 1; server default: compression.target_ratio, 10). "
    "Lower keeps more of the text"
)


def target_ratio(value: str) -> float:
    """argparse type: a ratio above 1, as the server accepts."""
    try:
        ratio = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not ratio > 1:
        raise argparse.ArgumentTypeError(f"must be above 1, got {value}")
    return ratio


def compress(args: argparse.Namespace) -> int:
    data = read_input(args.input)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"llmc compress: input is not UTF-8 text ({exc})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with connect(args) as client:
        result = client.compress(
            text,
            args.mode,
            verify=args.verify,
            target_ratio=args.target_ratio,
            dictionary=args.dictionary,
        )
    write_output(args.output, result.envelope)
    s = result.stats
    extra = f", degraded: {s.reason}" if s.degraded else (f" ({s.reason})" if s.reason else "")
    if s.dictionary:
        extra += f", dictionary {s.dictionary}"
    print(
        f"{s.mode.value}: {human(s.original_bytes)} -> "
        f"{human(s.compressed_bytes)}, ratio {s.ratio:.2f}x, "
        f"{time.perf_counter() - t0:.2f}s{extra}",
        file=sys.stderr,
    )
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    envelope = read_input(args.input)
    t0 = time.perf_counter()
    with connect(args) as client:
        result = client.reconstruct(envelope)
    data = result.text.encode("utf-8")
    write_output(args.output, data)
    if args.output in (None, "-") and data and not data.endswith(b"\n"):
        print(file=sys.stderr)  # the status line on a line of its own; stdout stays exact
    print(
        f"{human(len(envelope))} -> {human(len(data))}, "
        f"{'exact' if result.exact else 'lossy'}, {time.perf_counter() - t0:.2f}s",
        file=sys.stderr,
    )
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
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
        choices=MODES,
        default="default",
        help="zstd: exact, no model; lossless: exact, model-coded; semantic: lossy summary; "
        "default: the server's default mode",
    )
    p.add_argument("--target-ratio", type=target_ratio, metavar="R", help=TARGET_RATIO_HELP)
    p.add_argument(
        "--dictionary",
        metavar="NAME",
        help="a corpus dictionary (name or id) to code with (see `llmc dict`)",
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
    add_server_arguments(p)
    p.set_defaults(func=compress)

    p = commands.add_parser(
        "reconstruct",
        help="turn an envelope back into text",
        description="Reconstruct the text held in an envelope.",
    )
    p.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="envelope file, - for stdin (default)"
    )
    p.add_argument("-o", "--output", help="text file (default: stdout)")
    add_server_arguments(p)
    p.set_defaults(func=reconstruct)
