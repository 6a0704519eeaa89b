"""`llmc serve`: the server's command, which the client's `llmc` finds through the
`llmcompress.cli` entry point this distribution declares."""

from __future__ import annotations

import argparse
import sys


def serve(args: argparse.Namespace) -> int:
    # Imported here: `llmc compress` and friends must not pay for the server's imports.
    import asyncio

    from ..core.config import ConfigError, load_config
    from ..telemetry import configure_logging
    from .server import serve as run_server

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
    if args.print_config:
        import yaml

        # The file, the environment (LLMC_*, BATCH_SIZE, MAX_CONCURRENT) and the flags, merged.
        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    configure_logging(config.monitoring)
    try:
        asyncio.run(run_server(config))
    except ConfigError as exc:  # e.g. an unreadable TLS key or tokens file
        print(f"llmc serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmc serve: {exc}", file=sys.stderr)
        return 1
    return 0


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "serve", help="run the gRPC server", description="Run the llmcompress gRPC server."
    )
    p.add_argument("--config", help="YAML config file (LLMC_SECTION__KEY env vars override it)")
    p.add_argument("--host", help="listen address (default: config server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: config server.port, 50051)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the configuration as loaded (file, environment and flags) and exit",
    )
    p.set_defaults(func=serve)
