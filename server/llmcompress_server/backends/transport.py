"""HTTP plumbing shared by the Ollama and OpenAI backends: httpx errors and statuses -> ours.

Translation happens here, at the boundary (like httpx's own
`map_httpcore_exceptions`), so pools, retries and codecs only ever see the
service's `BackendError` tree. What is retryable is decided here too:

    connection refused/reset, dropped connection   BackendUnavailable   retryable
    timeout                                        BackendTimeout       retryable
    429, 500, 502, 503, 504                        BackendUnavailable   retryable
    garbage body, error line mid-stream            BackendProtocolError retryable
    404                                            ModelNotFound        not retried
    400, 401, 403, 422, other 4xx                  BackendError         not retried
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..core.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# 429/503 say "busy, come back later": back off, but the endpoint is alive,
# so they do not count towards its circuit breaker.
BUSY_STATUSES = frozenset({429, 503})


class BusyError(BackendUnavailable):
    """The backend answered 429/503: alive but saturated."""


def new_client(
    max_connections: int,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncHTTPTransport | None = None,
) -> httpx.AsyncClient:
    """A pooled client; total timeouts are applied per call by the pool, not here."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers=headers,
        trust_env=False,  # never route loopback/backends through a proxy from the env
        transport=transport,
    )


def _single_connection() -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), trust_env=False
    )


class ClientSlots:
    """One single-connection httpx client per in-flight slot, and a spare for the rest.

    httpcore's pool checks every pooled connection (a readability poll each) on
    every request; with one connection per client that stays O(1). Measured
    here (a loaded 2-core box, 8 connections to one endpoint): 10-30% less CPU
    per call than one shared 8-connection client.
    """

    def __init__(self, slots: int, headers: dict[str, str] | None = None) -> None:
        self._headers = headers
        self._free = [self._new_slot() for _ in range(slots)]
        self._all = [client for client, _ in self._free]
        self._closing: set[asyncio.Task[None]] = set()
        # Health probes, and calls made past the pool's limit (direct use).
        self.spare = new_client(slots, headers)
        # The client's default headers (user agent, accept, ...) plus ours, for post_json.
        self._json_headers = httpx.Headers(self.spare.headers)
        self._json_headers["Content-Type"] = "application/json"

    def _new_slot(self) -> tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]:
        transport = _single_connection()
        return new_client(1, self._headers, transport), transport

    def _retire(
        self, slot: tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]
    ) -> tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]:
        """Close a cancelled call's connection in a task of its own; the slot gets a fresh one.

        httpcore closes a cancelled request's connection inside the cancelled task,
        so a second cancel (our timeout, then the gRPC deadline a moment later)
        interrupts the close and leaves the socket open, and the backend goes on
        generating for nobody. Seen under load in test_flow_semantic's deadline test.
        """
        old = slot[0]
        closing = asyncio.get_running_loop().create_task(old.aclose())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        fresh = self._new_slot()
        self._all[self._all.index(old)] = fresh[0]
        return fresh

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        if not self._free:
            yield self.spare
            return
        slot = self._free.pop()
        try:
            yield slot[0]
        except asyncio.CancelledError:
            slot = self._retire(slot)
            raise
        finally:
            self._free.append(slot)

    async def post_json(self, url: str, payload: Any) -> tuple[int, bytes]:
        """POST `payload` as JSON and read the whole answer: (status, body).

        Straight to a free slot's transport (public httpx API): the client layer's
        URL merging, cookie jar, auth and redirect handling do nothing for a backend
        call and cost about a quarter of httpx's CPU per call. httpx errors still
        surface as httpx exceptions (the transport maps httpcore's), and the
        OpenTelemetry httpx instrumentation, which wraps the transport, still sees it.
        """
        content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        request = httpx.Request("POST", url, content=content, headers=self._json_headers)
        if not self._free:
            resp = await self.spare.send(request)
            return resp.status_code, resp.content
        slot = self._free.pop()
        try:
            response = await slot[1].handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except asyncio.CancelledError:
            slot = self._retire(slot)
            raise
        finally:
            self._free.append(slot)
        return response.status_code, body

    async def aclose(self) -> None:
        for client in [*self._all, self.spare]:
            await client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def split_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


@contextmanager
def backend_errors(endpoint: str) -> Iterator[None]:
    """Translate httpx exceptions raised inside the block into BackendError subclasses."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise BackendTimeout(
            f"model backend {endpoint} did not answer in time ({type(exc).__name__})",
            endpoint=endpoint,
        ) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise BackendUnavailable(
            f"cannot reach model backend {endpoint} ({type(exc).__name__}: {exc}); "
            "check that it is running and the address is right",
            endpoint=endpoint,
        ) from exc
    except httpx.HTTPError as exc:
        raise BackendError(
            f"request to model backend {endpoint} failed ({type(exc).__name__}: {exc})",
            endpoint=endpoint,
            retryable=False,
        ) from exc


def error_message(body: bytes) -> str:
    """The `error` field of a JSON error body (Ollama and OpenAI styles), else the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    return error_text(data)


def error_text(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:500]
    return str(data)[:200]


def status_error(endpoint: str, status: int, body: bytes, model: str = "") -> BackendError:
    """The error for a non-2xx answer."""
    message = error_message(body)
    where = f"model backend {endpoint}"
    if status == 404:
        return ModelNotFound(
            f"{where} does not have model {model!r} ({message}); pull it there "
            "(e.g. `ollama pull {model}`) or configure another model",
            endpoint=endpoint,
        )
    if status in BUSY_STATUSES:
        return BusyError(f"{where} is busy (HTTP {status}: {message})", endpoint=endpoint)
    if status in RETRYABLE_STATUSES:
        return BackendUnavailable(f"{where} failed (HTTP {status}: {message})", endpoint=endpoint)
    if status in (401, 403):
        return BackendError(
            f"{where} refused the credentials (HTTP {status}: {message}); check the API key",
            endpoint=endpoint,
            retryable=False,
        )
    return BackendError(
        f"{where} rejected the request (HTTP {status}: {message})",
        endpoint=endpoint,
        retryable=False,
    )


def parse_json(endpoint: str, raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        raise BackendProtocolError(
            f"model backend {endpoint} sent something that is not JSON: {text[:80]!r}",
            endpoint=endpoint,
        ) from None


def json_object(endpoint: str, raw: bytes | str) -> dict[str, Any]:
    data = parse_json(endpoint, raw)
    if not isinstance(data, dict):
        raise BackendProtocolError(
            f"model backend {endpoint} sent JSON that is not an object", endpoint=endpoint
        )
    if "error" in data:
        # Ollama reports failures in-band, even with HTTP 200 (e.g. mid-stream).
        raise BackendProtocolError(
            f"model backend {endpoint} reported an error: {error_text(data)}",
            endpoint=endpoint,
        )
    return data
