"""Model tiers and the fallback chain; `build_text_backend` picks the backend from config.

A `ChatRequest.model` names a tier ("low", "standard", "high"; None is
"standard") or an explicit model. The router tries, in order: each configured
pool (Ollama before OpenAI-compatible when `model.prefer_local`) with the
requested tier's model, then the other tiers (lower first), then the embedded
engine (`llm.fallback_embedded`). Within a pool, "next endpoint" is the pool's
own retry on the least-loaded endpoint. Every step taken past the first choice
is noted in the answer (`ChatResult.fallbacks`), so the pipeline can mark the
result degraded; when everything fails the pipeline stores ZSTD (degraded) or
answers UNAVAILABLE, as `llm.allow_degraded` says.

Which backend `model.backend: auto` means: Ollama when OLLAMA_HOST is set,
`model.ollama.endpoints` is non-empty, or `model.ollama_endpoint` is written in
the config (as the seed config does); otherwise the embedded engine, so a
server started with no config serves with the embedded model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..core.config import BackendKind, Config, ModelTiers
from ..core.envelope import ModelIdentity
from ..core.errors import BackendError, BackendUnavailable, Overloaded, PreconditionFailed
from ..core.events import Events
from . import ChatRequest, ChatResult, Embeddings, TextBackend
from .ollama import OllamaEndpoint, normalise_host
from .openai import OpenAIEndpoint
from .pool import EndpointClient, EndpointPool
from .ratelimit import TokenBucket
from .retry import RetryPolicy

TIERS = ("low", "standard", "high")
DEFAULT_TIER = "standard"


def tier_order(wanted: str) -> list[str]:
    """The tier asked for, then lower tiers, then higher ones."""
    if wanted not in TIERS:
        return [DEFAULT_TIER, "low", "high"]
    i = TIERS.index(wanted)
    return [wanted, *reversed(TIERS[:i]), *TIERS[i + 1 :]]


@dataclass
class Route:
    """A pool and the models it serves per tier (and for embeddings)."""

    pool: EndpointPool
    models: ModelTiers
    embed_model: str | None = None

    def candidates(self, wanted: str | None) -> list[str]:
        wanted = wanted or DEFAULT_TIER
        names = [] if wanted in TIERS else [wanted]
        names += [getattr(self.models, tier) for tier in tier_order(wanted)]
        return list(dict.fromkeys(names))  # in order, without repeats


class BackendRouter:
    """A TextBackend over pools and a last-resort backend (the embedded engine)."""

    name = "router"

    def __init__(self, routes: Sequence[Route], last_resort: TextBackend | None = None) -> None:
        self.routes = list(routes)
        self.last_resort = last_resort

    async def chat(self, request: ChatRequest) -> ChatResult:
        failures: list[str] = []
        for route in self.routes:
            for model in route.candidates(request.model):
                try:
                    result = await route.pool.chat(request, model)
                except BackendError as exc:
                    failures.append(f"{route.pool.name} {model}: {exc}")
                    continue
                if failures:
                    note = f"answered by {route.pool.name} {model} after: {failures[0]}"
                    return replace(result, fallbacks=(*result.fallbacks, note))
                return result
        if self.last_resort is not None:
            try:
                result = await self.last_resort.chat(replace(request, model=None))
            except (BackendError, PreconditionFailed, Overloaded) as exc:
                failures.append(f"{self.last_resort.name}: {exc}")
            else:
                cause = failures[0] if failures else "no remote backend configured"
                note = f"answered by the {self.last_resort.name} model after: {cause}"
                return replace(result, fallbacks=(*result.fallbacks, note))
        raise BackendUnavailable(
            "no model backend could answer: " + " | ".join(failures), retryable=False
        )

    async def embed(self, texts: Sequence[str]) -> Embeddings | None:
        for route in self.routes:
            if route.embed_model is None:
                continue
            try:
                vectors = await route.pool.embed(texts, route.embed_model)
            except BackendError:
                continue
            return Embeddings(vectors, route.embed_model)
        if self.last_resort is not None:
            return await self.last_resort.embed(texts)
        return None

    def cache_identity(self) -> str:
        """Only the first route's models answer without a fallback (fallbacks mark the result
        degraded, and degraded results are not cached), but every route, endpoint and tier
        is named: editing any of them is a new key."""
        return ";".join(
            f"{r.pool.name}[{','.join(e.url for e in r.pool.endpoints)}]="
            f"{r.models.low},{r.models.standard},{r.models.high}"
            for r in self.routes
        )

    def default_model(self) -> ModelIdentity | None:
        return None  # known only from an answer (an Ollama digest, a served model name)

    async def close(self) -> None:
        for route in self.routes:
            await route.pool.close()
        # The last resort (the embedded engine) belongs to the app, which closes it.


def ollama_endpoints(config: Config, environ: Mapping[str, str]) -> list[str]:
    """`model.ollama.endpoints`, else OLLAMA_HOST, else `model.ollama_endpoint`."""
    if config.model.ollama.endpoints:
        return [normalise_host(e) for e in config.model.ollama.endpoints]
    host = environ.get("OLLAMA_HOST", "").strip()
    return [normalise_host(host or config.model.ollama_endpoint)]


def resolve_backend(config: Config, environ: Mapping[str, str]) -> BackendKind:
    kind = config.model.backend
    if kind is not BackendKind.AUTO:
        return kind
    explicit = (
        environ.get("OLLAMA_HOST", "").strip()
        or config.model.ollama.endpoints
        or "ollama_endpoint" in config.model.model_fields_set
    )
    return BackendKind.OLLAMA if explicit else BackendKind.EMBEDDED


def _pool(
    config: Config, name: str, clients: Sequence[EndpointClient], events: Events
) -> EndpointPool:
    llm = config.llm
    return EndpointPool(
        name,
        clients,
        limit=config.performance.max_concurrent,
        timeout=llm.timeout,
        retry=RetryPolicy(llm.max_retries, llm.retry_base_delay, llm.retry_max_delay),
        bucket=TokenBucket(llm.rate_limit, llm.rate_burst),
        breaker_failures=llm.breaker_failures,
        cooldown=llm.cooldown,
        probe_interval=llm.health_interval,
        events=events,
    )


def _ollama_route(config: Config, environ: Mapping[str, str], events: Events) -> Route:
    cfg = config.model.ollama
    limit = config.performance.max_concurrent
    clients = [
        OllamaEndpoint(
            url,
            max_connections=limit,
            keep_alive=cfg.keep_alive,
            num_ctx=cfg.num_ctx,
            stream=cfg.stream,
            events=events,
        )
        for url in ollama_endpoints(config, environ)
    ]
    return Route(_pool(config, "ollama", clients, events), cfg.models, cfg.embed_model)


def _openai_route(config: Config, environ: Mapping[str, str], events: Events) -> Route | None:
    cfg = config.model.openai
    if not cfg.endpoints:
        return None
    key = environ.get(cfg.api_key_env) if cfg.api_key_env else None
    clients = [
        OpenAIEndpoint(
            url,
            max_connections=config.performance.max_concurrent,
            api_key=key,
            events=events,
            schema_format=cfg.schema_format,
        )
        for url in cfg.endpoints
    ]
    return Route(_pool(config, "openai", clients, events), cfg.models, cfg.embed_model)


def build_text_backend(
    config: Config,
    engine: TextBackend | None,
    environ: Mapping[str, str] | None = None,
    events: Events | None = None,
) -> TextBackend | None:
    """The TextBackend codecs use: the embedded engine alone, or a router over pools
    that report to `events`.

    Reads OLLAMA_HOST and the OpenAI key variable from `environ` (default: the
    process environment) here, at the edge.
    """
    env = os.environ if environ is None else environ
    events = events if events is not None else Events()
    kind = resolve_backend(config, env)
    if kind is BackendKind.EMBEDDED:
        return engine
    ollama = (
        _ollama_route(config, env, events)
        if kind is BackendKind.OLLAMA or config.model.ollama.endpoints
        else None
    )
    openai = _openai_route(config, env, events)
    if kind is BackendKind.OPENAI and openai is None:
        raise PreconditionFailed(
            "model.backend is openai but model.openai.endpoints is empty; "
            "set it to the server's base URL (ending in /v1)"
        )
    local_first = config.model.prefer_local or kind is BackendKind.OLLAMA
    ordered = [ollama, openai] if local_first else [openai, ollama]
    routes = [r for r in ordered if r is not None]
    return BackendRouter(routes, engine if config.llm.fallback_embedded else None)
