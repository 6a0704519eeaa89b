"""One Ollama server's HTTP API: /api/chat, /api/embed, and /api/tags, /api/ps, /api/version.

Retries, limits and routing live in `pool.py`; this module makes one call and
turns the answer (or its failure) into a `ChatResult` or a `BackendError`.
Ollama reports durations in nanoseconds and errors in-band: a streamed answer
can carry `{"error": ...}` on any line with HTTP 200, so every line is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..core.envelope import ModelIdentity
from ..core.errors import BackendProtocolError
from ..core.events import Events
from . import ChatRequest, ChatResult
from .transport import ClientSlots, backend_errors, json_object, split_address, status_error

DEFAULT_PORT = 11434
NS = 1e-9
# Ollama's duration fields -> our timing names (seconds).
DURATIONS = {
    "load_duration": "load",
    "prompt_eval_duration": "prompt_eval",
    "eval_duration": "eval",
    "total_duration": "total",
}


def normalise_host(value: str) -> str:
    """An endpoint as OLLAMA_HOST may write it ("host", "host:port", a URL) -> "scheme://host:port"."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # a bind-all address, as `ollama serve` reads it; reach it on loopback
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else DEFAULT_PORT)
    return f"{parts.scheme}://{host}:{port}{parts.path}"


def timings_from(data: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(data[key]) * NS for key, name in DURATIONS.items() if key in data}


class OllamaEndpoint:
    """Calls to one Ollama server over a pooled `httpx.AsyncClient`."""

    provider = "ollama"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        keep_alive: str | None = None,
        num_ctx: int | None = None,
        stream: bool = True,
        events: Events | None = None,
    ) -> None:
        self.url = normalise_host(url)
        self.events = events if events is not None else Events()
        self.keep_alive = keep_alive
        self.num_ctx = num_ctx
        self.stream = stream
        self.address, self.port = split_address(self.url)
        self._chat_url = f"{self.url}/api/chat"
        # Beyond the in-flight limit so health probes never queue behind model calls.
        self._clients = ClientSlots(max_connections)
        self._digests: dict[str, str] = {}
        self._tags_lock = asyncio.Lock()
        self._tags_loaded = False

    def __repr__(self) -> str:
        return f"OllamaEndpoint({self.url})"

    async def close(self) -> None:
        await self._clients.aclose()

    # -- health and model availability -------------------------------------------------

    async def version(self) -> str:
        with backend_errors(self.url):
            resp = await self._clients.spare.get(f"{self.url}/api/version")
        if resp.status_code != 200:
            raise status_error(self.url, resp.status_code, resp.content)
        return str(json_object(self.url, resp.content).get("version", ""))

    async def tags(self) -> dict[str, str]:
        """Installed models: name -> digest."""
        with backend_errors(self.url):
            resp = await self._clients.spare.get(f"{self.url}/api/tags")
        if resp.status_code != 200:
            raise status_error(self.url, resp.status_code, resp.content)
        models = json_object(self.url, resp.content).get("models") or []
        self._digests = {str(m.get("name")): str(m.get("digest", "")) for m in models}
        self._tags_loaded = True
        return dict(self._digests)

    async def loaded(self) -> list[str]:
        """Models loaded in memory now (/api/ps)."""
        with backend_errors(self.url):
            resp = await self._clients.spare.get(f"{self.url}/api/ps")
        if resp.status_code != 200:
            raise status_error(self.url, resp.status_code, resp.content)
        return [str(m.get("name")) for m in json_object(self.url, resp.content).get("models") or []]

    async def identity(self, model: str) -> ModelIdentity:
        """The model as the envelope names it; its Ollama digest when the tags say."""
        if not self._tags_loaded:
            async with self._tags_lock:
                if not self._tags_loaded:
                    try:
                        await self.tags()
                    except Exception:
                        self._tags_loaded = True  # best effort: the name hash below will do
        digest = self._digests.get(model) or self._digests.get(f"{model}:latest", "")
        if len(digest) < 16:
            digest = hashlib.sha256(f"ollama:{model}".encode()).hexdigest()
        return ModelIdentity(name=model, sha256=digest)

    # -- model calls -------------------------------------------------------------------

    def _payload(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_predict": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            options["seed"] = request.seed
        if self.num_ctx:
            options["num_ctx"] = self.num_ctx
        payload: dict[str, Any] = {
            "model": model,
            "messages": [dict(m) for m in request.messages],
            "stream": stream,
            "options": options,
        }
        if request.json_schema is not None:
            payload["format"] = request.json_schema
        if self.keep_alive is not None:
            payload["keep_alive"] = self.keep_alive
        return payload

    async def chat(self, request: ChatRequest, model: str) -> ChatResult:
        identity = await self.identity(model)
        with self.events.llm_call("chat", model, self.provider, self.address, self.port) as call:
            payload = self._payload(request, model, self.stream)
            if self.stream:
                text, final = await self._chat_stream(payload, model)
            else:
                text, final = await self._chat_once(payload, model)
            timings = timings_from(final)
            for name, seconds in timings.items():
                call.span.set_attribute(f"ollama.{name}_seconds", seconds)
            input_tokens = int(final.get("prompt_eval_count", 0))
            output_tokens = int(final.get("eval_count", 0))
            call.usage(input_tokens, output_tokens)
            if final.get("done_reason"):
                call.span.set_attribute(
                    "gen_ai.response.finish_reasons", [str(final["done_reason"])]
                )
        return ChatResult(
            text=text,
            model=identity,
            backend=self.provider,
            endpoint=self.url,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            timings=timings,
        )

    async def _chat_once(self, payload: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
        with backend_errors(self.url):
            status, body = await self._clients.post_json(self._chat_url, payload)
        if status != 200:
            raise status_error(self.url, status, body, model)
        data = json_object(self.url, body)
        return str((data.get("message") or {}).get("content", "")), data

    async def _chat_stream(self, payload: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
        parts: list[str] = []
        final: dict[str, Any] | None = None
        with backend_errors(self.url):
            async with (
                self._clients.client() as client,
                client.stream("POST", f"{self.url}/api/chat", json=payload) as resp,
            ):
                if resp.status_code != 200:
                    body = await resp.aread()
                    raise status_error(self.url, resp.status_code, body, model)
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    data = json_object(self.url, line)  # raises on an {"error": ...} line
                    parts.append(str((data.get("message") or {}).get("content", "")))
                    if data.get("done"):
                        final = data
        if final is None:
            raise BackendProtocolError(
                f"model backend {self.url} ended the stream before its final (done) line",
                endpoint=self.url,
            )
        return "".join(parts), final

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        with self.events.llm_call(
            "embeddings", model, self.provider, self.address, self.port
        ) as call:
            with backend_errors(self.url):
                payload: dict[str, Any] = {"model": model, "input": list(texts)}
                if self.keep_alive is not None:
                    payload["keep_alive"] = self.keep_alive
                async with self._clients.client() as client:
                    resp = await client.post(f"{self.url}/api/embed", json=payload)
            if resp.status_code != 200:
                raise status_error(self.url, resp.status_code, resp.content, model)
            data = json_object(self.url, resp.content)
            vectors = data.get("embeddings")
            if not isinstance(vectors, list) or len(vectors) != len(texts):
                raise BackendProtocolError(
                    f"model backend {self.url} sent {len(vectors or [])} embeddings "
                    f"for {len(texts)} texts",
                    endpoint=self.url,
                )
            call.usage(int(data.get("prompt_eval_count", 0)), 0)
        return [[float(x) for x in v] for v in vectors]
