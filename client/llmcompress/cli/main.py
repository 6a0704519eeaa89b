"""The `llmc` parser and entry point: the client's commands, plus those other distributions add.

Every command that talks to a server takes --server (default $LLMC_SERVER or
127.0.0.1:50051), --token (default $LLMC_TOKEN) and --tls-ca/--tls-cert/--tls-key,
and prints a one-line summary to stderr. Other distributions add commands through
the `llmcompress.cli` entry-point group: each entry point is a function that adds
its subcommands to the parser's (`llmc serve` comes so with llmcompress-server).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from .._errors import LLMCompressError, Unauthenticated, Unavailable
from ..connect import TOKEN_ENV, connection_problem
from . import batch, dictionaries, envelopes, stats

PLUGIN_GROUP = "llmcompress.cli"
SERVER_DISTRIBUTION = "llmcompress-server"

EPILOG = """examples:
  llmc serve                                  # embedded model, 127.0.0.1:50051 (llmcompress-server)
  llmc compress --mode zstd notes.txt -o notes.llmc
  echo "hello world" | llmc compress --mode lossless - > hello.llmc
  llmc reconstruct notes.llmc > notes.txt
  llmc stats                                  # per-stage p50/p95/p99, slowest stage
  llmc warm corpus.jsonl --mode lossless      # pre-fill the cache, with a progress bar
  llmc batch corpus.jsonl -o out.jsonl --mode zstd --resume
  llmc unbatch out.jsonl -o texts.jsonl
  llmc dict train tickets.jsonl --name tickets   # a corpus dictionary, with a progress bar
  llmc batch tickets.jsonl -o out.jsonl --mode zstd --dictionary tickets
  LLMC_TOKEN=... llmc stats --server llmc.example:50051 --tls-ca ca.pem
"""


def _serve_missing(args: argparse.Namespace) -> int:
    print(
        f"llmc serve: the server is not installed; it comes with the {SERVER_DISTRIBUTION} "
        "distribution. From a source checkout: `pip install ./protos/python ./client .` "
        "(or `make install`)",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmc",
        description="Compress text with language models through the llmcompress gRPC service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    added = set()
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        plugin.load()(commands)
        added.add(plugin.name)
    if "serve" not in added:
        # Said where it is asked for: the client alone has no server to run.
        p = commands.add_parser(
            "serve", help=f"run the gRPC server (needs {SERVER_DISTRIBUTION})", add_help=False
        )
        p.set_defaults(func=_serve_missing, takes_any=True)
    for module in (envelopes, stats, batch, dictionaries):
        module.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_any", False):
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
