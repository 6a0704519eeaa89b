"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on 127.0.0.1,
serving the packaged SmolLM2 GGUF: a real model server for the OpenAI backend's tests and
benchmarks (the simulator is for faults only).

Needs the `server` extra of llama-cpp-python (in the dev extras). The server takes one
request at a time; its structured output is `{"type": "json_object", "schema": ...}`
(`model.openai.schema_format: json_object`), and it has no embeddings endpoint for a chat
model (`model.openai.embed_model: null`: similarity comes from the bundled MiniLM).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bench.overhead import _free_port
from llmcompress_server.backends.embedded import default_model_path

MODEL_ALIAS = "smollm2"


def server_config(base_url: str) -> dict[str, Any]:
    """Config overrides that point the OpenAI backend at this server."""
    tiers = {"low": MODEL_ALIAS, "standard": MODEL_ALIAS, "high": MODEL_ALIAS}
    return {
        "backend": "openai",
        "openai": {
            "endpoints": [base_url],
            "api_key_env": None,
            "models": tiers,
            "embed_model": None,
            "schema_format": "json_object",
        },
    }


@contextlib.asynccontextmanager
async def llama_openai_server(
    *, threads: int = 1, n_ctx: int = 2048, start_timeout: float = 120.0
) -> AsyncIterator[str]:
    """Start the server, wait until it lists its model, yield its base URL (ending in /v1),
    stop it on exit."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(default_model_path()), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
                try:
                    if (await client.get(f"{base}/models")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama_cpp.server did not answer in {start_timeout:.0f} s")
                await asyncio.sleep(0.3)
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
