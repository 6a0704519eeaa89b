"""Connection options: TLS, the bearer token, and the retry policy with its backoff.

Only UNAVAILABLE and RESOURCE_EXHAUSTED are retried (`LLMCompressError.retryable`):
every other status means the same call would fail the same way again.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from ._errors import LLMCompressError, from_rpc_error

log = logging.getLogger("llmcompress")


@dataclass(frozen=True)
class TLS:
    """TLS for the channel; give certificate_chain + private_key as well for mutual TLS.

    `server_name` overrides the name checked against the server's certificate
    (for a target given as an IP address)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLS:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a server retry hint sets the minimum wait.

    Attempt n (from 1) waits initial_backoff * multiplier**(n-1), capped at
    max_backoff, scaled by a random factor in [1 - jitter, 1 + jitter]. Retries
    stop at max_attempts calls or when the next wait would pass the deadline.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int, hint: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        draw: float = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        if hint is not None and hint > 0:
            # The hint is the server's floor; jitter above it so waiting clients spread out.
            return max(backoff * draw, hint * (1 + abs(draw - 1)))
        return backoff * draw

    def backoff(self, error: LLMCompressError, attempt: int, deadline: Deadline) -> float | None:
        """Seconds to wait before trying again after failed attempt `attempt`, or None when
        `error` is final: not retryable, attempts used up, or no time left after the wait."""
        wait = self.delay(attempt, error.retry_after)
        if not error.retryable or attempt >= self.max_attempts or not deadline.allows(wait):
            return None
        return wait


class Deadline:
    """An absolute deadline for a call and its retries (None: no deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def allows(self, wait: float) -> bool:
        """Whether waiting `wait` seconds still leaves time for another attempt."""
        left = self.remaining()
        return left is None or wait < left


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class Attempts:
    """One unary call's attempts under a retry policy and one deadline for them all: the
    retry loop the blocking and the asyncio client share (each sleeps its own way)."""

    def __init__(self, retry: RetryPolicy, timeout: float | None) -> None:
        self.retry = retry
        self.deadline = Deadline(timeout)
        self.number = 1

    def failed(self, err: grpc.RpcError) -> float:
        """Seconds to wait before the next attempt; raises the call's `LLMCompressError`
        when the failure is final."""
        error = from_rpc_error(err)
        wait = self.retry.backoff(error, self.number, self.deadline)
        if wait is None:
            # Called while handling `err`: the error carries all of it, so no chained trace.
            raise error from None
        log.info("%s; retry %d in %.2fs", error, self.number, wait)
        self.number += 1
        return wait
