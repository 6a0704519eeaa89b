"""One OpenAI-compatible server (a cloud API, vLLM, llama.cpp server, LM Studio, Ollama's /v1).

`/v1/chat/completions` (JSON-schema `response_format`) and `/v1/embeddings`;
`/v1/models` for health. The API key is read once from the environment
variable the config names, sent as a bearer header, and never logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..core.config import SchemaFormat
from ..core.envelope import ModelIdentity
from ..core.errors import BackendProtocolError
from ..core.events import Events
from . import ChatRequest, ChatResult
from .transport import ClientSlots, backend_errors, json_object, split_address, status_error


class OpenAIEndpoint:
    """Calls to one OpenAI-compatible base URL (ending in /v1) over a pooled client."""

    provider = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        api_key: str | None = None,
        events: Events | None = None,
        schema_format: SchemaFormat = SchemaFormat.JSON_SCHEMA,
    ) -> None:
        self.url = base_url.rstrip("/")
        self.schema_format = schema_format
        self.events = events if events is not None else Events()
        self.address, self.port = split_address(self.url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._clients = ClientSlots(max_connections, headers)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIEndpoint({self.url})"

    async def close(self) -> None:
        await self._clients.aclose()

    async def version(self) -> str:
        """Health probe: the model list answers when the server is up and the key is good."""
        with backend_errors(self.url):
            resp = await self._clients.spare.get(f"{self.url}/models")
        if resp.status_code != 200:
            raise status_error(self.url, resp.status_code, resp.content)
        json_object(self.url, resp.content)
        return "openai-compatible"

    async def identity(self, model: str) -> ModelIdentity:
        # The API names models but publishes no file digest.
        return ModelIdentity(model, hashlib.sha256(f"openai:{model}".encode()).hexdigest())

    async def chat(self, request: ChatRequest, model: str) -> ChatResult:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [dict(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": False,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.json_schema is not None:
            if self.schema_format is SchemaFormat.JSON_OBJECT:
                payload["response_format"] = {"type": "json_object", "schema": request.json_schema}
            else:
                payload["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "schema": request.json_schema,
                        "strict": True,
                    },
                }
        with self.events.llm_call("chat", model, self.provider, self.address, self.port) as call:
            with backend_errors(self.url):
                status, body = await self._clients.post_json(
                    f"{self.url}/chat/completions", payload
                )
            if status != 200:
                raise status_error(self.url, status, body, model)
            data = json_object(self.url, body)
            try:
                choice = data["choices"][0]
                text = choice["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise BackendProtocolError(
                    f"model backend {self.url} sent a completion without choices[0].message",
                    endpoint=self.url,
                ) from None
            usage = data.get("usage") or {}
            input_tokens = int(usage.get("prompt_tokens", 0))
            output_tokens = int(usage.get("completion_tokens", 0))
            call.usage(input_tokens, output_tokens)
            if choice.get("finish_reason"):
                call.span.set_attribute(
                    "gen_ai.response.finish_reasons", [str(choice["finish_reason"])]
                )
        return ChatResult(
            text=str(text),
            model=await self.identity(str(data.get("model") or model)),
            backend=self.provider,
            endpoint=self.url,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        with self.events.llm_call(
            "embeddings", model, self.provider, self.address, self.port
        ) as call:
            with backend_errors(self.url):
                async with self._clients.client() as client:
                    resp = await client.post(
                        f"{self.url}/embeddings", json={"model": model, "input": list(texts)}
                    )
            if resp.status_code != 200:
                raise status_error(self.url, resp.status_code, resp.content, model)
            data = json_object(self.url, resp.content)
            items = sorted(data.get("data") or [], key=lambda d: int(d.get("index", 0)))
            if len(items) != len(texts):
                raise BackendProtocolError(
                    f"model backend {self.url} sent {len(items)} embeddings for {len(texts)} texts",
                    endpoint=self.url,
                )
            call.usage(int((data.get("usage") or {}).get("prompt_tokens", 0)), 0)
        return [[float(x) for x in item["embedding"]] for item in items]
