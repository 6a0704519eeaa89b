"""A pool of endpoints for one backend kind: in-flight limits, least-loaded routing, retries.

Each endpoint takes at most `limit` requests at once (Ollama queues without
bound once a model is loaded, so the bound has to be ours); a caller waits for
a free slot on the least-loaded endpoint whose circuit breaker lets requests
through. Retryable failures are retried (retry.py) on whichever endpoint is
least loaded then, within the caller's deadline; every request passes the
pool's token bucket first. Cancelling a caller cancels its HTTP request and
frees its slot at once. `inflight()` and `health()` are per-endpoint snapshots
for the `llmc_backend_inflight` / `llmc_backend_up` gauges; failures no model
call reports (timed-out attempts, failed probes) go to the server's `Events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ..core.deadline import remaining
from ..core.envelope import ModelIdentity
from ..core.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
)
from ..core.events import Events
from . import ChatRequest, ChatResult
from .breaker import BreakerState, CircuitBreaker
from .ratelimit import TokenBucket
from .retry import RetryPolicy
from .transport import BusyError

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a caller waiting for a slot sleeps before re-checking breakers (a
# cooled-down endpoint becomes usable without any release to wake the waiter).
RECHECK_SECONDS = 0.5
PROBE_TIMEOUT = 2.0


class EndpointClient(Protocol):
    """One server's API (OllamaEndpoint, OpenAIEndpoint)."""

    url: str
    provider: str

    async def chat(self, request: ChatRequest, model: str) -> ChatResult: ...

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]: ...

    async def version(self) -> str: ...

    async def identity(self, model: str) -> ModelIdentity: ...

    async def close(self) -> None: ...


@dataclass
class Endpoint:
    """One endpoint of a pool, with its slots, breaker and what it lacks."""

    client: EndpointClient
    limit: int
    breaker: CircuitBreaker
    in_flight: int = 0
    calls: int = 0
    failures: int = 0
    # Models this endpoint answered 404 for; the others are tried instead. Forgotten
    # at the next passing health probe, so a model pulled later is used again.
    missing: set[str] = field(default_factory=set)
    # Why the last health probe failed; cleared by a passing probe or a successful call.
    probe_error: str | None = None

    @property
    def url(self) -> str:
        return self.client.url


class EndpointPool:
    """The endpoints of one backend kind behind in-flight limits, retries and a rate limit."""

    def __init__(
        self,
        name: str,
        clients: Sequence[EndpointClient],
        *,
        limit: int,
        timeout: float,
        retry: RetryPolicy,
        bucket: TokenBucket | None = None,
        breaker_failures: int = 5,
        cooldown: float = 5.0,
        probe_interval: float = 10.0,
        events: Events | None = None,
    ) -> None:
        if not clients:
            raise ValueError(f"backend pool {name} needs at least one endpoint")
        self.name = name
        self.endpoints = [
            Endpoint(c, limit, CircuitBreaker(breaker_failures, cooldown)) for c in clients
        ]
        self.timeout = timeout
        self.retry = retry
        self.bucket = bucket or TokenBucket(0, 1)
        self.probe_interval = probe_interval
        self.events = events if events is not None else Events()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._prober: asyncio.Task[None] | None = None
        self._rng = random.Random()

    @property
    def in_flight(self) -> int:
        return sum(e.in_flight for e in self.endpoints)

    def inflight(self) -> list[tuple[str, int]]:
        """(endpoint URL, calls holding a slot there now)."""
        return [(e.url, e.in_flight) for e in self.endpoints]

    def health(self) -> list[tuple[str, int]]:
        """(endpoint URL, 1 healthy / 0 cooling down, on its half-open trial, or failing probes)."""
        return [
            (e.url, int(e.breaker.state is BreakerState.CLOSED and e.probe_error is None))
            for e in self.endpoints
        ]

    # -- slots -------------------------------------------------------------------------

    def _pick(self, model: str) -> Endpoint | None:
        """The least-loaded endpoint that can take `model` now; None: all are full."""
        having = [e for e in self.endpoints if model not in e.missing]
        if not having:
            raise ModelNotFound(
                f"no {self.name} endpoint has model {model!r} "
                f"({', '.join(e.url for e in self.endpoints)}); pull it or configure another model"
            )
        usable = [e for e in having if e.breaker.available()]
        if not usable:
            last = "; ".join(f"{e.url}: {e.breaker.last_error}" for e in having)
            raise BackendUnavailable(
                f"every {self.name} endpoint is cooling down after repeated failures ({last})",
                retryable=False,
            )
        free = [e for e in usable if e.in_flight < e.limit]
        if not free:
            return None
        return min(free, key=lambda e: (e.in_flight / e.limit, e.calls))

    async def _acquire(self, model: str) -> Endpoint:
        while (endpoint := self._pick(model)) is None:
            budget = remaining()
            if budget is not None and budget <= 0:
                raise DeadlineExceeded(
                    f"the deadline passed while waiting for a free {self.name} slot "
                    "(all endpoints at their in-flight limit, performance.max_concurrent)"
                )
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(
                    asyncio.shield(waiter), min(RECHECK_SECONDS, budget or RECHECK_SECONDS)
                )
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done():
                    self._wake_one()  # pass on the wake-up this cancelled caller received
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        endpoint.in_flight += 1
        endpoint.calls += 1
        endpoint.breaker.begin()
        return endpoint

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, endpoint: Endpoint) -> None:
        # Synchronous on purpose: it runs in `finally` blocks of cancelled calls.
        endpoint.in_flight -= 1
        self._wake_one()

    # -- calls -------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, model: str) -> ChatResult:
        return await self._call(model, lambda client: client.chat(request, model))

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        return await self._call(model, lambda client: client.embed(texts, model))

    async def _call(self, model: str, op: Callable[[EndpointClient], Awaitable[T]]) -> T:
        self._ensure_prober()
        attempt = 0
        while True:
            budget = remaining()
            if budget is not None and budget <= 0:
                raise DeadlineExceeded(f"the deadline passed before {self.name} could answer")
            await self.bucket.acquire(budget)
            endpoint = await self._acquire(model)
            try:
                return await self._attempt(endpoint, op)
            except ModelNotFound:
                endpoint.missing.add(model)
                if any(model not in e.missing for e in self.endpoints):
                    continue  # another endpoint may have it; not a retry
                raise
            except BackendError as exc:
                attempt += 1
                endpoint.failures += 1
                budget = remaining()
                delay = self.retry.delay(attempt, self._rng)
                if not self.retry.should_retry(exc, attempt) or (
                    budget is not None and delay >= budget
                ):
                    raise
                log.debug("retrying %s after %s (attempt %d)", self.name, exc, attempt)
            finally:
                self._release(endpoint)
            await asyncio.sleep(delay)

    async def _attempt(self, endpoint: Endpoint, op: Callable[[EndpointClient], Awaitable[T]]) -> T:
        budget = remaining()
        timeout = self.timeout if budget is None else min(self.timeout, budget)
        try:
            async with asyncio.timeout(timeout):
                result = await op(endpoint.client)
        except TimeoutError:
            exc = BackendTimeout(
                f"model backend {endpoint.url} did not answer within {timeout:.1f}s "
                "(llm.timeout or the request's deadline)",
                endpoint=endpoint.url,
            )
            # The model call itself only saw a cancellation, which telemetry does not count.
            self.events.backend_error(type(exc).__name__, endpoint.url)
            self._failed(endpoint, str(exc))
            raise exc from None
        except (BusyError, ModelNotFound):
            endpoint.breaker.release()  # alive and answering: not a breaker failure
            raise
        except BackendError as exc:
            if exc.retryable:
                self._failed(endpoint, str(exc))
            else:
                endpoint.breaker.release()
            raise
        except BaseException:
            endpoint.breaker.release()
            raise
        endpoint.breaker.success()
        endpoint.probe_error = None
        return result

    def _failed(self, endpoint: Endpoint, reason: str) -> None:
        was_open = endpoint.breaker.state is BreakerState.OPEN
        endpoint.breaker.failure(reason)
        if not was_open and endpoint.breaker.state is BreakerState.OPEN:
            log.warning(
                "%s endpoint %s is cooling down for %.0fs after %d failures in a row: %s",
                self.name, endpoint.url, endpoint.breaker.cooldown,
                endpoint.breaker.consecutive, reason,
            )  # fmt: skip

    # -- health ------------------------------------------------------------------------

    def _ensure_prober(self) -> None:
        if self._prober is None and self.probe_interval > 0:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            await self.probe()

    async def probe(self) -> dict[str, str]:
        """Check every endpoint once (/api/version or /v1/models); feeds the breakers."""
        states: dict[str, str] = {}
        for endpoint in self.endpoints:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await endpoint.client.version()
            except (BackendError, TimeoutError) as exc:
                if endpoint.breaker.state is BreakerState.CLOSED:
                    endpoint.breaker.failure(f"health probe failed: {exc}")
                endpoint.probe_error = str(exc) or type(exc).__name__
                self.events.backend_error("health_probe", endpoint.url)
                states[endpoint.url] = f"unhealthy: {exc}"
                continue
            if endpoint.breaker.state is not BreakerState.CLOSED or endpoint.probe_error:
                log.info("%s endpoint %s is healthy again", self.name, endpoint.url)
            endpoint.breaker.success()
            endpoint.probe_error = None
            endpoint.missing.clear()
            states[endpoint.url] = "ok"
        return states

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for endpoint in self.endpoints:
            await endpoint.client.close()
