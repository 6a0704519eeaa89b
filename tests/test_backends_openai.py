"""The OpenAI-compatible backend against the simulated server's /v1 API (as Ollama serves it)."""

from __future__ import annotations

import json

import pytest

from llmcompress_server.backends import ChatRequest
from llmcompress_server.backends.openai import OpenAIEndpoint
from llmcompress_server.backends.router import BackendRouter, build_text_backend
from llmcompress_server.core.errors import BackendError, ModelNotFound
from tests.conftest import SimFactory, make_config
from tests.test_backends_ollama import HELLO, MODEL, SCHEMA


async def test_chat_with_json_schema_and_usage(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, api_key="k-123")
    endpoint = OpenAIEndpoint(f"{sim.url}/v1", max_connections=2, api_key="k-123")
    try:
        plain = await endpoint.chat(HELLO, MODEL)
        shaped = await endpoint.chat(ChatRequest(HELLO.messages, json_schema=SCHEMA), MODEL)
        assert await endpoint.version() == "openai-compatible"
        vectors = await endpoint.embed(["one", "two", "three"], "nomic-embed-text")
    finally:
        await endpoint.close()
    assert plain.text == "the quick brown fox jumps over the lazy dog"
    assert plain.backend == "openai"
    # `usage` as the server reported it (two chat calls to the same model).
    assert plain.input_tokens + shaped.input_tokens == sim.stats.input_tokens[MODEL]
    assert plain.output_tokens + shaped.output_tokens == sim.stats.output_tokens[MODEL]
    assert plain.input_tokens > 9 and plain.output_tokens > 0
    assert set(json.loads(shaped.text)) == {"summary", "entities", "count"}
    assert len(vectors) == 3 and len(vectors[0]) == 256


async def test_bad_key_is_not_retried_and_missing_model_is_404(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, api_key="right")
    endpoint = OpenAIEndpoint(f"{sim.url}/v1", max_connections=1, api_key="wrong")
    try:
        with pytest.raises(BackendError, match="refused the credentials") as info:
            await endpoint.chat(HELLO, MODEL)
        assert not info.value.retryable
        assert "wrong" not in str(info.value)
    finally:
        await endpoint.close()
    good = OpenAIEndpoint(f"{sim.url}/v1", max_connections=1, api_key="right")
    try:
        with pytest.raises(ModelNotFound):
            await good.chat(HELLO, "gpt-nope")
    finally:
        await good.close()


async def test_openai_backend_from_config(sim_ollama: SimFactory) -> None:
    sim = await sim_ollama(latency=0.0, api_key="s3cret")
    config = make_config(
        model={
            "backend": "openai",
            "openai": {
                "endpoints": [f"{sim.url}/v1"],
                "api_key_env": "SIM_KEY",
                "models": {"low": MODEL, "standard": MODEL, "high": MODEL},
            },
        },
        llm={"rate_limit": 0, "health_interval": 0},
    )
    backend = build_text_backend(config, None, {"SIM_KEY": "s3cret"})
    assert isinstance(backend, BackendRouter)
    try:
        result = await backend.chat(HELLO)
    finally:
        await backend.close()
    assert result.backend == "openai" and result.model.name == MODEL
