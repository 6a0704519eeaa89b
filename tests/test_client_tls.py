"""Client connection options: TLS and mutual TLS against the real service, and the
bearer token on the wire."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmcompress import TLS, AsyncClient, Mode, RetryPolicy, Unauthenticated, Unavailable
from llmcompress_server.api.server import App, create_server

from .conftest import make_config, require_tool

ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        extra = ("-extfile", "san.ext") if name == "server" else ()
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra,
        )  # fmt: skip
    return d


@pytest.fixture
async def mtls_server(certs: Path) -> AsyncIterator[tuple[App, int]]:
    """The real service with an extra TLS port that requires a client certificate."""
    app = await create_server(make_config())
    creds = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = app.server.add_secure_port("127.0.0.1:0", creds)
    await app.start()
    yield app, port
    await app.stop(grace=0)


async def test_mutual_tls_round_trip(mtls_server: tuple[App, int], certs: Path) -> None:
    _, port = mtls_server
    tls = TLS.from_files(ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
    async with AsyncClient(f"127.0.0.1:{port}", tls=tls, timeout=30) as client:
        result = await client.compress("over mutual TLS " * 10, Mode.ZSTD)
        assert (await client.reconstruct(result.envelope)).text == "over mutual TLS " * 10


@pytest.mark.parametrize("variant", ["no client certificate", "plaintext"])
async def test_tls_refused_without_the_right_credentials(
    mtls_server: tuple[App, int], certs: Path, variant: str
) -> None:
    _, port = mtls_server
    tls = TLS.from_files(ca=certs / "ca.pem") if variant != "plaintext" else None
    async with AsyncClient(f"127.0.0.1:{port}", tls=tls, timeout=5, retry=ONCE) as client:
        with pytest.raises(Unavailable):
            await client.compress("refused", Mode.ZSTD)


def test_mutual_tls_needs_both_halves(certs: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        TLS.from_files(ca=certs / "ca.pem", cert=certs / "client.pem").credentials()


async def test_bearer_token_is_sent_as_authorization_metadata() -> None:
    # Server-side auth is another module's; this stand-in only records what the
    # client puts on the wire and answers UNAUTHENTICATED like an auth check would.
    seen: list[dict[str, Any]] = []

    async def compress(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.append(dict(context.invocation_metadata() or ()))
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected")
        return b""

    handler = grpc.method_handlers_generic_handler(
        "llmcompress.v1.CompressionService",
        {"Compress": grpc.unary_unary_rpc_method_handler(compress)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", token="s3cret", retry=ONCE) as client:
            with pytest.raises(Unauthenticated) as info:
                await client.compress("hello", Mode.ZSTD)
    finally:
        await server.stop(0)
    assert seen[0]["authorization"] == "Bearer s3cret"
    assert info.value.details == "token rejected"
