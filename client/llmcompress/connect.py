"""Connection options for command-line tools (`llmc`, the benchmark): --server, --token, --tls-*.

Public so that any tool talking to the service parses these options the same way.
"""

from __future__ import annotations

import argparse
import os

from ._client import DEFAULT_TARGET, Client
from ._options import TLS

TOKEN_ENV = "LLMC_TOKEN"
SERVER_ENV = "LLMC_SERVER"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--token and --tls-*: how to reach a server securely."""
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


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--server and --timeout, then the connection options: for commands that need a server."""
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV, DEFAULT_TARGET),
        help=f"server address host:port, or a gRPC target naming several replicas "
        f"(default: ${SERVER_ENV} or %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="deadline in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--load-balancing",
        choices=("round_robin", "pick_first"),
        default="round_robin",
        help="gRPC policy over the addresses --server resolves to (ipv4:h:p1,h:p2 or "
        "dns:///name:port for several replicas): round_robin sends each call and stream to "
        "the next connected one (default), pick_first keeps one connection",
    )
    add_connection_arguments(parser)


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


def connect(args: argparse.Namespace) -> Client:
    """A `Client` for the options `add_server_arguments` added."""
    tls, token = connection(args)
    return Client(
        args.server, timeout=args.timeout, tls=tls, token=token, load_balancing=args.load_balancing
    )
