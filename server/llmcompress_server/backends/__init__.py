"""Model backends: the embedded llama.cpp engine, and pools of Ollama or OpenAI-compatible servers.

Every backend speaks `TextBackend` (the engine itself, or `BackendRouter` over
the pools with the engine as last resort); codecs never see HTTP or llama.cpp
details, nor which backend they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.envelope import ModelIdentity


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion asked of a backend."""

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
    """A backend's answer, with the model that gave it and how it got there."""

    text: str
    model: ModelIdentity
    backend: str
    endpoint: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    # Backend-reported timings in seconds (e.g. Ollama's load/prompt_eval/eval).
    timings: dict[str, float] = field(default_factory=dict)
    # Fallbacks taken before this answer (another endpoint tier or backend answered
    # than the one asked for); a result built on them is marked degraded.
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Embeddings:
    """Sentence embeddings and the model that made them."""

    vectors: list[list[float]]
    model: str  # the embedding model's name, as quality scores report it


class TextBackend(Protocol):
    """What codecs call for model work: chat completions, embeddings, and the backend's
    own account of which models answer it."""

    name: str

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    async def embed(self, texts: Sequence[str]) -> Embeddings | None:
        """Sentence embeddings, or None when the backend has no embedding endpoint."""
        ...

    def cache_identity(self) -> str | None:
        """Names every model that can answer a call without a fallback, for cache keys
        (editing any of them must change the key); None while that is not known yet, and
        then nothing it shapes is cached."""
        ...

    def default_model(self) -> ModelIdentity | None:
        """The model a call without a tier reaches, when known without calling it."""
        ...

    async def close(self) -> None: ...
