"""Retry policy, circuit breaker, token bucket, model tiers, fallback chain and backend choice."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest

from llmcompress_server.backends import ChatRequest, ChatResult, Embeddings
from llmcompress_server.backends.breaker import BreakerState, CircuitBreaker
from llmcompress_server.backends.ollama import OllamaEndpoint
from llmcompress_server.backends.ratelimit import TokenBucket
from llmcompress_server.backends.retry import RetryPolicy
from llmcompress_server.backends.router import (
    BackendRouter,
    Route,
    build_text_backend,
    resolve_backend,
    tier_order,
)
from llmcompress_server.backends.transport import status_error
from llmcompress_server.core.config import BackendKind, ModelTiers, load_config
from llmcompress_server.core.envelope import ModelIdentity
from llmcompress_server.core.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
)
from tests.conftest import ROOT, SimFactory, StartServer, make_config
from tests.test_backends_ollama import HELLO, MODEL, pool_for

SEED = ROOT / "examples" / "seed-config.yaml"


# -- retry policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(s, True) for s in (429, 500, 502, 503, 504)],
        *[(s, False) for s in (400, 401, 403, 404, 422)],
    ],
)
def test_which_statuses_are_retried(status: int, retryable: bool) -> None:
    err = status_error("http://x:1", status, b'{"error": "boom"}', "m")
    assert RetryPolicy(3).should_retry(err, 1) is retryable
    assert "boom" in str(err)
    if status == 404:
        assert isinstance(err, ModelNotFound)


@pytest.mark.parametrize(
    "exc",
    [
        BackendUnavailable("refused"),
        BackendTimeout("slow"),
        BackendProtocolError("error line"),
    ],
)
def test_transport_failures_are_retried_until_max(exc: BackendError) -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry(exc, 1) and policy.should_retry(exc, 2)
    assert not policy.should_retry(exc, 3)


def test_non_backend_errors_are_not_retried() -> None:
    assert not RetryPolicy(5).should_retry(DeadlineExceeded("late"), 1)
    assert not RetryPolicy(5).should_retry(ValueError("bug"), 1)


def test_backoff_is_full_jitter_with_a_cap() -> None:
    policy = RetryPolicy(10, base_delay=0.1, max_delay=1.0)
    rng = random.Random(1)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(300)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.9 and min(delays) < cap * 0.1  # spread over [0, cap]


# -- circuit breaker --------------------------------------------------------------------


def test_breaker_opens_cools_down_and_half_opens_for_one_probe() -> None:
    breaker = CircuitBreaker(failures=3, cooldown=0.05)
    for _ in range(2):
        breaker.failure("x")
    assert breaker.available()
    breaker.failure("x")
    assert breaker.state is BreakerState.OPEN and not breaker.available()
    time.sleep(0.06)
    assert breaker.available() and breaker.state is BreakerState.HALF_OPEN
    breaker.begin()  # the one probe
    assert not breaker.available()
    breaker.failure("still down")
    assert breaker.state is BreakerState.OPEN  # one failure in half-open reopens it
    time.sleep(0.06)
    assert breaker.available()
    breaker.begin()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive == 0


def test_breaker_counts_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, cooldown=10)
    for _ in range(10):
        breaker.failure("x")
        breaker.failure("x")
        breaker.success()
    assert breaker.state is BreakerState.CLOSED


async def test_busy_answers_do_not_open_the_breaker(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, script=["503"] * 6)
    pool = pool_for(sim.url, retries=10)  # breaker opens after 3 endpoint failures
    try:
        await pool.chat(HELLO, MODEL)
    finally:
        await pool.close()
    assert pool.endpoints[0].breaker.state is BreakerState.CLOSED


async def test_health_probe_closes_a_recovered_endpoints_breaker(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0)
    pool = pool_for(sim.url, cooldown=60)
    breaker = pool.endpoints[0].breaker
    for _ in range(3):
        breaker.failure("was down")
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BackendUnavailable, match="cooling down"):
        await pool.chat(HELLO, MODEL)
    try:
        assert await pool.probe() == {sim.url: "ok"}
        assert breaker.state is BreakerState.CLOSED
        await pool.chat(HELLO, MODEL)
    finally:
        await pool.close()


# -- token bucket -----------------------------------------------------------------------


async def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(per_minute=240, burst=3)  # 4/s
    start = time.monotonic()
    for _ in range(3):
        await bucket.acquire()
    # A bucket without the burst would wait 0.25 s per token (0.5 s for these three);
    # the bound is ten times what an idle machine needs, for a loaded one.
    assert time.monotonic() - start < 0.3
    for _ in range(2):
        await bucket.acquire()
    assert time.monotonic() - start >= 0.45  # two beyond the burst at 4/s: a lower bound


async def test_token_bucket_refuses_a_wait_beyond_the_deadline() -> None:
    bucket = TokenBucket(per_minute=6, burst=1)
    await bucket.acquire()
    with pytest.raises(DeadlineExceeded, match="rate limit"):
        await bucket.acquire(budget=1.0)


async def test_zero_rate_disables_the_bucket() -> None:
    bucket = TokenBucket(per_minute=0, burst=1)
    await asyncio.gather(*(bucket.acquire() for _ in range(1000)))


# -- tiers and the fallback chain --------------------------------------------------------


def test_tier_order_goes_down_then_up() -> None:
    assert tier_order("high") == ["high", "standard", "low"]
    assert tier_order("standard") == ["standard", "low", "high"]
    assert tier_order("low") == ["low", "standard", "high"]


class LastResort:
    """Stands in for the embedded engine at the end of the chain (its own tests load it)."""

    name = "embedded"

    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.calls += 1
        return ChatResult("local answer", ModelIdentity("smol", "0" * 64), "embedded")

    async def embed(self, texts: Sequence[str]) -> Embeddings | None:
        return None

    def cache_identity(self) -> str | None:
        return "smol"

    def default_model(self) -> ModelIdentity | None:
        return None

    async def close(self) -> None:
        return None


async def test_missing_tier_model_falls_to_the_next_tier(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, models=("gemma3:4b",))
    tiers = ModelTiers(low="gemma3:4b", standard="absent:7b", high="absent:8b")
    router = BackendRouter([Route(pool_for(sim.url), tiers)])
    try:
        result = await router.chat(ChatRequest(HELLO.messages, model="high"))
    finally:
        await router.close()
    assert result.model.name == "gemma3:4b"
    assert len(result.fallbacks) == 1 and "absent:8b" in result.fallbacks[0]


async def test_chain_ends_with_the_embedded_engine_then_fails(sim_ollama: SimFactory) -> None:
    dead = await sim_ollama()
    url = dead.url
    await dead.close()
    last = LastResort()
    router = BackendRouter([Route(pool_for(url, retries=0), ModelTiers())], last)
    result = await router.chat(HELLO)
    assert result.backend == "embedded" and last.calls == 1
    (note,) = result.fallbacks
    assert "answered by the embedded model" in note and "cannot reach" in note

    bare = BackendRouter([Route(pool_for(url, retries=0), ModelTiers())])
    with pytest.raises(BackendUnavailable, match="no model backend could answer"):
        await bare.chat(HELLO)
    await router.close()
    await bare.close()


async def test_no_fallback_noted_when_the_first_choice_answers(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0)
    router = BackendRouter([Route(pool_for(sim.url), ModelTiers())], LastResort())
    try:
        result = await router.chat(HELLO)
    finally:
        await router.close()
    assert result.model.name == MODEL and result.fallbacks == ()


# -- which backend --------------------------------------------------------------------------


def test_auto_is_embedded_with_no_config_and_no_ollama_host() -> None:
    config = make_config()
    assert resolve_backend(config, {}) is BackendKind.EMBEDDED
    engine = LastResort()
    assert build_text_backend(config, engine, {}) is engine


def test_auto_is_ollama_with_ollama_host_or_an_explicit_endpoint() -> None:
    assert resolve_backend(make_config(), {"OLLAMA_HOST": "10.0.0.5"}) is BackendKind.OLLAMA
    explicit = make_config(model={"ollama_endpoint": "http://gpu:11434"})
    assert resolve_backend(explicit, {}) is BackendKind.OLLAMA
    listed = make_config(model={"ollama": {"endpoints": ["a:1", "b:2"]}})
    assert resolve_backend(listed, {}) is BackendKind.OLLAMA


async def test_seed_config_drives_the_ollama_backend(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0)
    config = load_config(SEED, environ={})
    env = {"OLLAMA_HOST": sim.host_port}
    backend = build_text_backend(config, LastResort(), env)
    assert isinstance(backend, BackendRouter)
    pool = backend.routes[0].pool
    assert [e.url for e in pool.endpoints] == [sim.url]
    assert pool.endpoints[0].limit == 8  # performance.max_concurrent
    assert pool.timeout == 30.0 and pool.retry.max_retries == 3  # the seed's llm section
    assert pool.bucket.rate == 1.0  # rate_limit: 60 per minute
    try:
        result = await backend.chat(HELLO)
    finally:
        await backend.close()
    assert result.backend == "ollama" and result.model.name == MODEL
    # Without OLLAMA_HOST the seed's own endpoint is used, as written.
    seeded = build_text_backend(config, None, {})
    assert isinstance(seeded, BackendRouter)
    assert [e.url for e in seeded.routes[0].pool.endpoints] == ["http://localhost:11434"]
    await seeded.close()


def test_openai_key_comes_from_the_named_env_var_and_is_never_shown() -> None:
    config = make_config(
        model={
            "backend": "openai",
            "openai": {"endpoints": ["http://127.0.0.1:9/v1"], "api_key_env": "MY_KEY"},
        }
    )
    backend = build_text_backend(config, None, {"MY_KEY": "sk-secret-123"})
    assert isinstance(backend, BackendRouter)
    client = backend.routes[0].pool.endpoints[0].client
    assert "sk-secret" not in repr(client)
    assert not isinstance(client, OllamaEndpoint)
    assert client._clients.spare.headers["authorization"] == "Bearer sk-secret-123"  # type: ignore[attr-defined]
    assert "sk-secret" not in repr(backend.routes[0].pool.endpoints)


async def test_server_built_from_the_seed_config_uses_ollama_host(
    sim_ollama: SimFactory, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await sim_ollama(latency=0.0)
    monkeypatch.setenv("OLLAMA_HOST", sim.host_port)
    config = load_config(
        SEED,
        environ={},
        overrides={
            "server": {"host": "127.0.0.1", "port": 0},
            "monitoring": {"enable_prometheus": False},
            "model": {"embedded": {"preload": False}},
        },
    )
    app = await start_server(config)
    assert isinstance(app.backend, BackendRouter)
    assert app.backend.last_resort is app.engine  # llm.fallback_embedded
    result = await app.backend.chat(HELLO)
    assert result.endpoint == sim.url and sim.stats.completed == 1
