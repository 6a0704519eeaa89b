"""Model backends: the embedded llama.cpp engine now; Ollama and OpenAI-compatible pools later.

Every backend speaks `TextBackend`; codecs never see HTTP or llama.cpp details.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..envelope import ModelIdentity


@dataclass(frozen=True)
class ChatRequest:
    messages: Sequence[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = 0
    # Constrain the output to this JSON schema where the backend can.
    json_schema: dict[str, Any] | None = None
    # Model tier or explicit model name; None: the backend's default.
    model: str | None = None


@dataclass
class ChatResult:
    text: str
    model: ModelIdentity
    backend: str
    endpoint: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    # Backend-reported timings in seconds (e.g. Ollama's load/prompt_eval/eval).
    timings: dict[str, float] = field(default_factory=dict)


class TextBackend(Protocol):
    name: str

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]] | None:
        """Sentence embeddings, or None when the backend has no embedding endpoint."""
        ...

    async def close(self) -> None: ...
