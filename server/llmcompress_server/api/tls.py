"""TLS for the listening port: a server certificate, and client certificates (mTLS) with a CA."""

from __future__ import annotations

from pathlib import Path

import grpc

from ..core.config import ConfigError, SecurityConfig


def _read(path: Path, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"security.{key} {path} cannot be read: {exc.strerror}") from None


def server_credentials(security: SecurityConfig) -> grpc.ServerCredentials | None:
    """None: plaintext (the default, for loopback or behind a TLS-terminating proxy)."""
    if security.tls_cert is None and security.tls_key is None:
        if security.tls_client_ca is not None:
            raise ConfigError("security.tls_client_ca needs security.tls_cert and tls_key too")
        return None
    if security.tls_cert is None or security.tls_key is None:
        raise ConfigError("security.tls_cert and security.tls_key must be set together")
    pair = (_read(security.tls_key, "tls_key"), _read(security.tls_cert, "tls_cert"))
    if security.tls_client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=_read(security.tls_client_ca, "tls_client_ca"),
        require_client_auth=True,
    )
