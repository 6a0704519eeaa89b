"""Who may call, and how often: bearer tokens and per-client rate limits, as one interceptor.

Tokens come from `security.tokens_file` (one per line) and/or the env var named
by `security.tokens_env` (comma list). They are compared in constant time and
never logged; a client is named in logs and rate buckets by a short hash of its
token, or by its peer address when auth is off. The gRPC health service stays
open so load-balancer and Kubernetes probes work without a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from ..core.config import ConfigError, SecurityConfig
from ..core.errors import Overloaded, Unauthenticated
from .interceptors import Handler, HandlerInterceptor, abort_for, behaviour

log = logging.getLogger(__name__)

# Probes must work without credentials; health reveals nothing but SERVING/NOT_SERVING.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_BEARER = "bearer "
# Idle buckets are dropped past this many clients, so spoofed peers cannot grow memory.
_MAX_BUCKETS = 10_000


def load_tokens(security: SecurityConfig, environ: Mapping[str, str] | None = None) -> list[bytes]:
    """Every accepted token; empty means auth is off."""
    env = os.environ if environ is None else environ
    tokens: list[str] = []
    if security.tokens_file is not None:
        try:
            lines = Path(security.tokens_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"security.tokens_file {security.tokens_file} cannot be read: {exc.strerror}"
            ) from None
        tokens += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if security.tokens_env is not None:
        raw = env.get(security.tokens_env)
        if raw is None:
            raise ConfigError(
                f"security.tokens_env names {security.tokens_env}, which is not set; "
                "export it or remove the key"
            )
        tokens += [t.strip() for t in raw.split(",") if t.strip()]
    if (security.tokens_file is not None or security.tokens_env is not None) and not tokens:
        # Fail closed: a configured but empty token list must not mean "open to all".
        raise ConfigError("security.tokens_file/tokens_env is set but holds no tokens")
    return [t.encode("utf-8") for t in tokens]


def client_label(token: bytes) -> str:
    """A loggable name for a token: 8 hex chars of its SHA-256, never the token."""
    return "token:" + hashlib.sha256(token).hexdigest()[:8]


class RateLimiter:
    """Token bucket per client: `per_minute` refill, a burst of one minute's quota."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, stamp)

    def take(self, client: str) -> None:
        """Spend one request for `client` or raise Overloaded with the wait until the next."""
        now = self._clock()
        tokens, stamp = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            raise Overloaded(
                f"client rate limit of {self.per_minute:g} requests/minute reached "
                "(security.client_rate_limit); retry after the hinted delay",
                retry_after=(1.0 - tokens) / self.rate,
            )
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_BUCKETS:
            self._evict(now)

    def _evict(self, now: float) -> None:
        full_after = self.burst / self.rate
        for client, (_, stamp) in list(self._buckets.items()):
            if now - stamp >= full_after:  # refilled by now: same as a fresh bucket
                del self._buckets[client]


class AuthInterceptor(HandlerInterceptor):
    """UNAUTHENTICATED without a listed bearer token; RESOURCE_EXHAUSTED over the rate."""

    def __init__(self, tokens: list[bytes], limiter: RateLimiter | None) -> None:
        self.tokens = tokens
        self.limiter = limiter

    def _token_matches(self, given: bytes) -> bool:
        # Compare against every token, without an early exit, so timing says nothing.
        found = False
        for token in self.tokens:
            found |= hmac.compare_digest(given, token)
        return found

    def admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Raise Unauthenticated or Overloaded; otherwise the call may proceed."""
        client = context.peer().rsplit(":", 1)[0]  # per host, not per ephemeral port
        if self.tokens:
            header = ""
            for key, value in context.invocation_metadata() or ():
                if key == "authorization" and isinstance(value, str):
                    header = value
            if not header.lower().startswith(_BEARER):
                raise Unauthenticated(
                    "this server requires a bearer token: send metadata "
                    "'authorization: Bearer <token>'"
                )
            given = header[len(_BEARER) :].strip().encode("utf-8")
            if not self._token_matches(given):
                log.warning("rejected a call with an unknown token from %s", client)
                raise Unauthenticated("the bearer token is not valid on this server")
            client = client_label(given)
        if self.limiter is not None:
            self.limiter.take(client)

    def wrap(self, method: str, handler: Handler) -> Handler:
        if method.startswith(OPEN_PREFIXES):
            return handler
        inner = behaviour(handler)
        if handler.unary_unary is not None or handler.stream_unary is not None:

            async def one_response(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                # `request` is the message, or the request iterator for stream-unary.
                try:
                    self.admit(context)
                except (Unauthenticated, Overloaded) as exc:
                    await abort_for(exc, context)
                return await inner(request, context)

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary is not None
                else grpc.stream_unary_rpc_method_handler
            )
            return make(one_response, handler.request_deserializer, handler.response_serializer)

        # Streamed responses. Every kind is wrapped, so no new method can bypass auth.
        async def streamed_responses(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                self.admit(context)
            except (Unauthenticated, Overloaded) as exc:
                await abort_for(exc, context)
            async for response in inner(requests, context):
                yield response

        make_stream = (
            grpc.stream_stream_rpc_method_handler
            if handler.stream_stream is not None
            else grpc.unary_stream_rpc_method_handler
        )
        return make_stream(
            streamed_responses, handler.request_deserializer, handler.response_serializer
        )


def build_auth(security: SecurityConfig) -> AuthInterceptor | None:
    """The interceptor for this config, or None when neither tokens nor a rate limit is set."""
    tokens = load_tokens(security)
    limiter = RateLimiter(security.client_rate_limit) if security.client_rate_limit else None
    if not tokens and limiter is None:
        return None
    log.info(
        "auth: %d bearer token(s), client rate limit %s",
        len(tokens),
        f"{security.client_rate_limit:g}/min" if limiter else "off",
    )
    return AuthInterceptor(tokens, limiter)
