"""Security on the real server: TLS + mTLS, bearer tokens, client rate limits,
the message-size limit, and no user text (or token) in the logs."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.auth import RateLimiter, client_label, load_tokens
from llmcompress_server.core.config import ConfigError, SecurityConfig
from llmcompress_server.core.errors import Overloaded

from .conftest import StartServer

TOKEN = "s3cret-token-0123456789"
OTHER = "second-token-abcdef"


@dataclass
class Pki:
    ca: bytes
    server_cert: Path
    server_key: Path
    ca_file: Path
    client_cert: bytes
    client_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    san: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert, all made here."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("llmcompress test CA", ca_key, None, ca_key, ca=True)
    server_key = _key()
    server = _cert("127.0.0.1", server_key, ca, ca_key, san=True)
    client_key = _key()
    client = _cert("test client", client_key, ca, ca_key)
    pem = serialization.Encoding.PEM
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(server.public_bytes(pem))
    (out / "server.key").write_bytes(_pem_key(server_key))
    return Pki(
        ca=ca.public_bytes(pem),
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        ca_file=out / "ca.pem",
        client_cert=client.public_bytes(pem),
        client_key=_pem_key(client_key),
    )


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_tls_and_tokens(start_server: StartServer, pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n\n{OTHER}\n")
    app = await start_server(
        security={
            "tls_cert": str(pki.server_cert),
            "tls_key": str(pki.server_key),
            "tokens_file": str(tokens),
        }
    )
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    request = pb.CompressRequest(text="over TLS, with a token " * 8, mode=pb.MODE_ZSTD)
    async with grpc.aio.secure_channel(app.address, creds) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        assert await _code(stub.Compress(request)) == grpc.StatusCode.UNAUTHENTICATED
        bad = stub.Compress(request, metadata=_bearer("not-" + TOKEN))
        assert await _code(bad) == grpc.StatusCode.UNAUTHENTICATED
        basic = stub.Compress(request, metadata=(("authorization", f"Basic {TOKEN}"),))
        assert await _code(basic) == grpc.StatusCode.UNAUTHENTICATED
        for token in (TOKEN, OTHER):
            resp = await stub.Compress(request, metadata=_bearer(token))
            back = await stub.Reconstruct(
                pb.ReconstructRequest(envelope=resp.envelope), metadata=_bearer(token)
            )
            assert back.text == request.text
        # Streams are guarded too.
        stream = stub.BatchCompress(iter([pb.BatchCompressRequest(id="1", request=request)]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Probes need no token (Check, and the server-streaming Watch).
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        # Reflection tells what the server offers: guarded like the service itself.
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in reflect:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Plaintext to a TLS port fails the handshake: never served.
    async with grpc.aio.insecure_channel(app.address) as plain:
        stub = pb_grpc.CompressionServiceStub(plain)
        call = stub.Compress(request, metadata=_bearer(TOKEN), timeout=3)
        assert await _code(call) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate(start_server: StartServer, pki: Pki) -> None:
    app = await start_server(
        security={
            "tls_cert": str(pki.server_cert),
            "tls_key": str(pki.server_key),
            "tls_client_ca": str(pki.ca_file),
        }
    )
    request = pb.CompressRequest(text="mutual TLS " * 8, mode=pb.MODE_ZSTD)
    anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    async with grpc.aio.secure_channel(app.address, anonymous) as channel:
        call = pb_grpc.CompressionServiceStub(channel).Compress(request, timeout=5)
        assert await _code(call) == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=pki.client_key, certificate_chain=pki.client_cert
    )
    async with grpc.aio.secure_channel(app.address, with_cert) as channel:
        resp = await pb_grpc.CompressionServiceStub(channel).Compress(request, timeout=5)
        assert resp.stats.original_bytes == len(request.text)


def test_tls_config_mistakes_name_the_key(pki: Pki, tmp_path: Path) -> None:
    from llmcompress_server.api.tls import server_credentials

    with pytest.raises(ConfigError, match=r"tls_cert and security\.tls_key"):
        server_credentials(SecurityConfig(tls_cert=pki.server_cert))
    with pytest.raises(ConfigError, match="tls_client_ca needs"):
        server_credentials(SecurityConfig(tls_client_ca=pki.ca_file))
    with pytest.raises(ConfigError, match=r"tls_key .* cannot be read"):
        server_credentials(
            SecurityConfig(tls_cert=pki.server_cert, tls_key=tmp_path / "missing.key")
        )


def test_tokens_from_env_and_fail_closed(tmp_path: Path) -> None:
    sec = SecurityConfig(tokens_env="LLMC_TEST_TOKENS")
    assert load_tokens(sec, {"LLMC_TEST_TOKENS": f" {TOKEN} ,{OTHER},"}) == [
        TOKEN.encode(),
        OTHER.encode(),
    ]
    with pytest.raises(ConfigError, match="not set"):
        load_tokens(sec, {})
    with pytest.raises(ConfigError, match="holds no tokens"):
        load_tokens(sec, {"LLMC_TEST_TOKENS": " , "})
    empty = tmp_path / "empty"
    empty.write_text("# no tokens yet\n")
    with pytest.raises(ConfigError, match="holds no tokens"):
        load_tokens(SecurityConfig(tokens_file=empty), {})
    assert TOKEN not in client_label(TOKEN.encode())


def test_rate_limiter_refills_and_hints_the_wait() -> None:
    now = [100.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6/min: one every 10 s, burst 6
    for _ in range(6):
        limiter.take("a")
    with pytest.raises(Overloaded) as info:
        limiter.take("a")
    assert info.value.retry_after == pytest.approx(10.0)
    limiter.take("b")  # buckets are per client
    now[0] += 10.0
    limiter.take("a")
    with pytest.raises(Overloaded):
        limiter.take("a")


async def test_client_rate_limit_on_the_wire(start_server: StartServer) -> None:
    app = await start_server(security={"client_rate_limit": 3, "tokens_env": None})
    request = pb.CompressRequest(text="rate limited", mode=pb.MODE_ZSTD)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        for _ in range(3):
            await stub.Compress(request)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Compress(request)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "security.client_rate_limit" in (info.value.details() or "")
        trailers = dict(info.value.trailing_metadata() or ())
        assert 15_000 <= int(trailers["retry-after-ms"]) <= 20_000  # 3/min: 20 s per request
        # Health stays open even for a client over its limit.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_max_message_size_is_enforced(start_server: StartServer) -> None:
    limit = 64 * 1024
    app = await start_server(
        security={"max_message_bytes": limit}, compression={"max_text_bytes": 1024 * 1024}
    )
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        ok = await stub.Compress(pb.CompressRequest(text="a" * (limit - 100), mode=pb.MODE_ZSTD))
        assert ok.stats.original_bytes == limit - 100
        big = stub.Compress(pb.CompressRequest(text="a" * (limit + 1), mode=pb.MODE_ZSTD))
        assert await _code(big) == grpc.StatusCode.RESOURCE_EXHAUSTED
        again = await stub.Compress(pb.CompressRequest(text="still serving", mode=pb.MODE_ZSTD))
        assert again.stats.original_bytes == len("still serving")


async def test_text_and_tokens_never_reach_the_logs(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    marker = "PLUM-VELVET-7731"
    text = f"The secret phrase {marker} appears in this text. " * 4
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    caplog.set_level(logging.DEBUG)
    app = await start_server(
        security={"tokens_file": str(tokens), "client_rate_limit": 1000},
        compression={"max_text_bytes": 4096},
    )
    auth = _bearer(TOKEN)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        resp = await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD), metadata=auth)
        await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope), metadata=auth)
        too_big = pb.CompressRequest(text=(text + " ") * 100, mode=pb.MODE_ZSTD)
        code = await _code(stub.Compress(too_big, metadata=auth))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        bad_mode = pb.CompressRequest(text=text, mode=99)  # type: ignore[arg-type]
        assert (
            await _code(stub.Compress(bad_mode, metadata=auth)) == grpc.StatusCode.INVALID_ARGUMENT
        )
        items = [
            pb.BatchCompressRequest(id=str(i), request=pb.CompressRequest(text=text, mode=m))
            for i, m in enumerate([pb.MODE_ZSTD, 99])  # type: ignore[list-item]
        ]
        answers = [r async for r in stub.BatchCompress(iter(items), metadata=auth)]
        assert len(answers) == 2
        assert await _code(stub.Compress(bad_mode)) == grpc.StatusCode.UNAUTHENTICATED
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records, "nothing was logged at DEBUG: the test would prove nothing"
    assert marker not in logged
    assert TOKEN not in logged


async def test_wrong_tokens_are_logged_by_hash_only(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    app = await start_server(security={"tokens_file": str(tokens)})
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + TOKEN
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        call = stub.Compress(pb.CompressRequest(text="x"), metadata=_bearer(wrong))
        assert await _code(call) == grpc.StatusCode.UNAUTHENTICATED
        await stub.Compress(pb.CompressRequest(text="x"), metadata=_bearer(TOKEN))
    assert "unknown token" in caplog.text
    assert TOKEN not in caplog.text


# -- llmc: --token / $LLMC_TOKEN and --tls-* -------------------------------------------


async def test_llmc_token_and_tls_options(
    start_server: StartServer,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from llmcompress.cli import main as llmc_main

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    plain = await start_server(security={"tokens_file": str(tokens)})
    text = tmp_path / "in.txt"
    text.write_text("a token on the command line " * 10, encoding="utf-8")
    envelope = tmp_path / "out.llmc"
    monkeypatch.delenv("LLMC_TOKEN", raising=False)

    async def llmc(*args: str) -> tuple[int, str]:
        code = await asyncio.to_thread(llmc_main, list(args))
        out, err = capsys.readouterr()
        assert TOKEN not in out + err  # never printed
        return code, err

    compress = ("compress", "--mode", "zstd", "--server", plain.address, str(text))
    code, err = await llmc(*compress, "-o", str(envelope))
    assert code != 0
    assert "UNAUTHENTICATED" in err and "--token" in err and "LLMC_TOKEN" in err
    assert not envelope.exists() or envelope.stat().st_size == 0
    code, err = await llmc(*compress, "-o", str(envelope), "--token", "not-" + TOKEN)
    assert code != 0 and "UNAUTHENTICATED" in err and "not valid" in err
    code, err = await llmc(*compress, "-o", str(envelope), "--token", TOKEN)
    assert code == 0, err
    assert "ratio" in err
    monkeypatch.setenv("LLMC_TOKEN", TOKEN)  # the default for --token
    code, err = await llmc("reconstruct", "--server", plain.address, str(envelope))
    assert code == 0, err

    secure = await start_server(
        security={
            "tls_cert": str(pki.server_cert),
            "tls_key": str(pki.server_key),
            "tokens_file": str(tokens),
        }
    )
    code, err = await llmc("stats", "--server", secure.address, "--tls-ca", str(pki.ca_file))
    assert code == 0, err
    # Plaintext to the TLS port: the handshake fails, reported as unreachable.
    code, err = await llmc("stats", "--server", secure.address, "--timeout", "3")
    assert code == 3 and "cannot reach" in err
    # Half of a client certificate is a usage error, before any connection.
    with pytest.raises(SystemExit) as exit_info:
        llmc_main(["stats", "--tls-cert", str(pki.server_cert)])
    assert exit_info.value.code == 2
    assert "--tls-key" in capsys.readouterr().err
