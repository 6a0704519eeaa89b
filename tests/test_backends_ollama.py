"""The Ollama backend and its pool against the simulated Ollama, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from llmcompress_server.backends import ChatRequest
from llmcompress_server.backends.ollama import OllamaEndpoint, normalise_host
from llmcompress_server.backends.pool import EndpointPool
from llmcompress_server.backends.ratelimit import TokenBucket
from llmcompress_server.backends.retry import RetryPolicy
from llmcompress_server.core.deadline import deadline_scope
from llmcompress_server.core.errors import (
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
)
from tests.conftest import SimFactory
from tests.sim_ollama import instance_for

MODEL = "qwen2.5:7b-instruct-q4_k_m"
HELLO = ChatRequest([{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}])
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "entities": {"type": "array", "items": {"type": "string"}},
        "count": {"type": "integer"},
    },
    "required": ["summary", "entities", "count"],
}


def pool_for(
    *urls: str, limit: int = 8, retries: int = 3, timeout: float = 5.0, cooldown: float = 5.0
) -> EndpointPool:
    clients = [OllamaEndpoint(u, max_connections=limit) for u in urls]
    return EndpointPool(
        "ollama",
        clients,
        limit=limit,
        timeout=timeout,
        retry=RetryPolicy(retries, base_delay=0.01, max_delay=0.05),
        breaker_failures=3,
        cooldown=cooldown,
        probe_interval=0,
    )


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("http://ollama.internal:8080/", "http://ollama.internal:8080"),
        ("https://ollama.example", "https://ollama.example:443"),
        ("[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_ollama_host_is_normalised_like_ollama_reads_it(raw: str, url: str) -> None:
    assert normalise_host(raw) == url


@pytest.mark.parametrize("stream", [True, False])
async def test_chat_stream_and_not(sim_ollama: SimFactory, stream: bool) -> None:
    sim = await sim_ollama(latency=0.01)
    endpoint = OllamaEndpoint(sim.host_port, max_connections=2, stream=stream)
    try:
        result = await endpoint.chat(HELLO, MODEL)
    finally:
        await endpoint.close()
    assert result.text == "the quick brown fox jumps over the lazy dog"
    assert result.backend == "ollama" and result.endpoint == sim.url
    assert result.model.name == MODEL
    # Digest from /api/tags, not a made-up one.
    assert result.model.sha256 == next(
        t["digest"]
        for t in [sim._tag(MODEL)]  # the sim's published digest
    )
    # The counts the server reported (prompt_eval_count, eval_count), not a word count.
    assert result.input_tokens == sim.stats.input_tokens[MODEL] > 9
    assert result.output_tokens == sim.stats.output_tokens[MODEL] > 0
    # Nanoseconds converted to seconds: the sim reports latency 0.01 s as total.
    assert result.timings["total"] == pytest.approx(0.01)
    assert result.timings["eval"] == pytest.approx(0.006)
    assert set(result.timings) == {"load", "prompt_eval", "eval", "total"}


async def test_format_schema_is_sent_and_answer_parses(sim_ollama: SimFactory) -> None:
    seen: list[dict[str, Any]] = []

    def record(body: dict[str, Any]) -> str:
        seen.append(body)
        return json.dumps(instance_for(body["format"], ["some", "words"]))

    sim = await sim_ollama(latency=0.0, reply=record)
    endpoint = OllamaEndpoint(sim.url, max_connections=2, keep_alive="10m", num_ctx=4096)
    try:
        request = ChatRequest(
            HELLO.messages, max_tokens=50, temperature=0.3, seed=7, json_schema=SCHEMA
        )
        result = await endpoint.chat(request, MODEL)
    finally:
        await endpoint.close()
    answer = json.loads(result.text)
    assert set(answer) == {"summary", "entities", "count"}
    assert isinstance(answer["entities"], list) and isinstance(answer["count"], int)
    body = seen[0]
    assert body["format"] == SCHEMA
    assert body["keep_alive"] == "10m"
    assert body["options"] == {"num_predict": 50, "temperature": 0.3, "seed": 7, "num_ctx": 4096}


async def test_health_and_model_availability(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0)
    endpoint = OllamaEndpoint(sim.url, max_connections=1)
    try:
        assert await endpoint.version() == "0.12.6"
        tags = await endpoint.tags()
        assert MODEL in tags and len(tags[MODEL]) == 64
        assert await endpoint.loaded() == []
        await endpoint.chat(HELLO, MODEL)
        assert await endpoint.loaded() == [MODEL]
        vectors = await endpoint.embed(["a fox", "a dog"], "nomic-embed-text")
        assert len(vectors) == 2 and len(vectors[0]) == 256
    finally:
        await endpoint.close()


async def test_missing_model_is_404_and_never_retried(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0)
    pool = pool_for(sim.url, retries=5)
    try:
        with pytest.raises(ModelNotFound, match="not found, try pulling it first"):
            await pool.chat(HELLO, "no-such-model:1b")
    finally:
        await pool.close()
    assert sim.stats.paths["/api/chat"] == 1


@pytest.mark.parametrize("fault", ["503", "error", "drop", "garbage"])
async def test_retryable_faults_are_retried(sim_ollama: SimFactory, fault: str) -> None:
    sim = await sim_ollama(latency=0.0, script=[fault, fault])
    pool = pool_for(sim.url, retries=3)
    try:
        result = await pool.chat(HELLO, MODEL)
    finally:
        await pool.close()
    assert result.text.startswith("the quick brown fox")
    assert sim.stats.faults[fault] == 2
    assert sim.stats.paths["/api/chat"] == 3


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("503", BackendUnavailable),
        ("error", BackendProtocolError),
        ("drop", BackendUnavailable),
        ("garbage", BackendProtocolError),
    ],
)
async def test_retries_stop_at_max_retries(
    sim_ollama: SimFactory, fault: str, error: type[Exception]
) -> None:
    sim = await sim_ollama(latency=0.0, script=[fault] * 10)
    pool = pool_for(sim.url, retries=2)
    try:
        with pytest.raises(error):
            await pool.chat(HELLO, MODEL)
    finally:
        await pool.close()
    assert sim.stats.paths["/api/chat"] == 3  # one try + two retries


async def test_error_line_mid_stream_with_http_200_is_caught(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, script=["error"])
    endpoint = OllamaEndpoint(sim.url, max_connections=1, stream=True)
    try:
        with pytest.raises(BackendProtocolError, match="llama runner process has terminated"):
            await endpoint.chat(HELLO, MODEL)
    finally:
        await endpoint.close()


async def test_slow_backend_hits_the_deadline_and_frees_everything(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=30.0, slots=4)
    pool = pool_for(sim.url, retries=3)
    start = time.monotonic()
    try:
        with deadline_scope(0.3), pytest.raises((BackendTimeout, DeadlineExceeded)):
            await pool.chat(HELLO, MODEL)
        elapsed = time.monotonic() - start
        # The 0.3 s deadline, not 30 s latency x 3 retries, ended it (10x slack for load).
        assert elapsed < 20.0
        assert pool.in_flight == 0
        await wait_until(lambda: sim.stats.in_flight == 0)
        assert sim.stats.cancelled >= 1
    finally:
        await pool.close()


async def test_llm_timeout_applies_without_a_deadline(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(hang_rate=1.0)
    pool = pool_for(sim.url, retries=1, timeout=0.2)
    try:
        with pytest.raises(BackendTimeout, match=r"did not answer within 0\.2s"):
            await pool.chat(HELLO, MODEL)
    finally:
        await pool.close()
    assert sim.stats.paths["/api/chat"] == 2
    await wait_until(lambda: sim.stats.in_flight == 0)


async def test_cancelled_callers_leave_no_backend_request(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=30.0, slots=4)
    pool = pool_for(sim.url, limit=4)
    try:
        calls = [asyncio.create_task(pool.chat(HELLO, MODEL)) for _ in range(10)]
        await wait_until(lambda: sim.stats.in_flight == 4)
        assert pool.in_flight == 4  # six more wait for a slot, none beyond the limit
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        assert pool.in_flight == 0
        # Against the 30 s the requests would otherwise hold (10x slack for load).
        await wait_until(lambda: sim.stats.in_flight == 0, within=10.0)
        assert sim.stats.cancelled == 4
        assert sim.stats.max_in_flight == 4
    finally:
        await pool.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_a_second_cancel_during_cleanup_still_closes_the_connection(
    sim_ollama: SimFactory, stream: bool
) -> None:
    # Our timeout fires, then the gRPC deadline cancels the handler while httpcore is
    # closing the connection; the backend must still see the caller go away.
    sim = await sim_ollama(latency=30.0, slots=4)
    endpoint = OllamaEndpoint(sim.url, max_connections=2, stream=stream)
    try:
        for round_ in range(1, 4):
            call = asyncio.create_task(endpoint.chat(HELLO, MODEL))
            await wait_until(lambda: sim.stats.in_flight == 1)
            call.cancel()
            for _ in range(3):  # land the second cancel inside the first one's cleanup
                await asyncio.sleep(0)
                call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # Against the 30 s the request would otherwise hold (10x slack for load).
            await wait_until(lambda: sim.stats.in_flight == 0, within=10.0)
            assert sim.stats.cancelled == round_
        # The cancelled slots were replaced: the endpoint still answers.
        sim.options.latency = 0.0
        result = await endpoint.chat(HELLO, MODEL)
        assert result.text
    finally:
        await endpoint.close()


async def test_in_flight_limit_and_least_loaded_routing(sim_ollama: SimFactory) -> None:
    a = await sim_ollama(latency=0.05, slots=8)
    b = await sim_ollama(latency=0.05, slots=8)
    pool = pool_for(a.url, b.url, limit=3)
    try:
        await asyncio.gather(*(pool.chat(HELLO, MODEL) for _ in range(30)))
    finally:
        await pool.close()
    assert a.stats.max_in_flight <= 3 and b.stats.max_in_flight <= 3
    # Least-loaded routing spreads the work.
    assert a.stats.completed >= 10 and b.stats.completed >= 10
    assert a.stats.completed + b.stats.completed == 30


async def test_dead_endpoint_is_skipped_after_its_breaker_opens(sim_ollama: SimFactory) -> None:
    live = await sim_ollama(latency=0.01, slots=8)
    dead = await sim_ollama()
    dead_url = dead.url
    await dead.close()  # a port nothing listens on any more
    pool = pool_for(dead_url, live.url, limit=4, retries=5)
    try:
        results = await asyncio.gather(*(pool.chat(HELLO, MODEL) for _ in range(20)))
        assert all(r.endpoint == live.url for r in results)
        states = {e.url: e.breaker.state.value for e in pool.endpoints}
        assert states[normalise_host(dead_url)] == "open"
    finally:
        await pool.close()


async def test_model_missing_on_one_endpoint_goes_to_another(sim_ollama: SimFactory) -> None:
    without = await sim_ollama(latency=0.0, models=("gemma3:4b",))
    having = await sim_ollama(latency=0.0)
    pool = pool_for(without.url, having.url, retries=0)
    try:
        for _ in range(4):
            assert (await pool.chat(HELLO, MODEL)).endpoint == having.url
    finally:
        await pool.close()
    assert without.stats.paths["/api/chat"] <= 1  # remembered as missing there


async def test_rate_limit_spaces_requests(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, slots=8)
    pool = pool_for(sim.url)
    pool.bucket = TokenBucket(per_minute=600, burst=2)  # 10/s after a burst of 2
    start = time.monotonic()
    try:
        await asyncio.gather(*(pool.chat(HELLO, MODEL) for _ in range(7)))
    finally:
        await pool.close()
    assert time.monotonic() - start >= 0.45  # 5 beyond the burst at 10/s


async def wait_until(cond: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)
