"""The service's metrics, exported through OTel; `Metrics` is an event sink and the request
interceptor's counter. Counters and histograms are kept in `tally.py` (an OTel SDK record
costs more than a short streamed item's whole path) and read by OTel at each collection.

Prometheus series (OTel's name mapping adds the unit and `_total` suffixes):

    compression_latency_seconds        histogram  mode, model, backend (per Compress/batch item)
    reconstruction_latency_seconds     histogram  mode, model
    compression_ratio                  histogram  mode, model, backend (original / envelope bytes)
    quality_score                      histogram  mode, model, backend (QualityScores.overall)
    llmc_stage_duration_seconds        histogram  stage (whole stage, nested stages included)
    llmc_items_total                   counter    rpc, outcome=ok|degraded|error, code (errors)
    llmc_queue_depth                   gauge      queue=admission|embedded|coding
    llmc_backend_inflight              gauge      endpoint (from `watch_backends` probes)
    llmc_backend_up                    gauge      endpoint: 1 up, 0 down (`watch_backends`)
    llmc_backend_errors_total          counter    kind (exception class, or health_probe),
                                                  server_address (host)
    llmc_cache_lookups_total           counter    tier, result=hit|miss
    llmc_cache_events_total            counter    tier, event (store, evict, error, ...)
    llmc_model_calls_total             counter    backend, model, operation=chat|embeddings|coding
                                                  (successful calls: generation and embedding apart)
    llmc_model_tokens_total            counter    backend, model, type=input|output,
                                                  operation=chat|embeddings|coding
    llmc_cost_total                    counter    backend, model (tokens x cost.prices; 0 unpriced)
    llmc_coding_steps_total            counter    (LOSSLESS coding engine) llama_decode steps
    llmc_coding_tokens_total           counter    rows coded: tokens/s = rate() of this
    llmc_coding_slots_total            counter    width x steps; occupancy = rate(tokens/slots)
    llmc_coding_occupancy              gauge      active slots / width, now
    llmc_coding_wait_seconds           histogram  kind=encode|decode: a job's wait for a first slot
    llmc_coding_job_seconds            histogram  kind: a job's coding time after that
    llmc_dictionary_items_total        counter    dictionary (first 8 hex digits of its id; the
                                                  first 32 seen, then "other"), mode
    llmc_dictionary_training_seconds   histogram  time to train and store one dictionary
    llmc_dictionary_training_samples_total counter samples dictionaries were trained on
    gen_ai_client_operation_duration_seconds  histogram  GenAI semconv attributes
    gen_ai_client_token_usage          histogram  gen_ai_token_type=input|output, ...

The seed's `throughput_per_minute` is `sum(rate(llmc_items_total[1m])) * 60`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlsplit

import grpc
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.domain import Mode
from ..core.events import CodingJobEnded, ModelCallEnded
from .cost import Pricing
from .tally import AttributeKey, HistogramTally, Tally, attribute_key, export_histograms

# Latencies span a 1 ms zstd call to a minutes-long CPU summary.
LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
# Ratios are original/envelope bytes: about 1-4 for zstd, 5-50 for summaries.
RATIO_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
# The GenAI semantic conventions' advised boundaries.
GENAI_DURATION_BUCKETS: tuple[float, ...] = (
    *(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
    *(1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

# The instruments, by the OTel name the code records under (Prometheus adds the unit and
# `_total`): histograms by bucket boundaries as (name, unit, description), then counters.
HISTOGRAMS: dict[tuple[float, ...], tuple[tuple[str, str, str], ...]] = {
    LATENCY_BUCKETS: (
        ("compression_latency", "s", "Time to compress one text (Compress call or batch item)"),
        ("reconstruction_latency", "s", "Time to reconstruct one envelope"),
        ("llmc_stage_duration", "s", "Duration of one pipeline stage, nested stages included"),
        ("llmc_coding_wait", "s", "Time a LOSSLESS coding job waited for its first engine slot"),
        ("llmc_coding_job", "s", "Time a LOSSLESS coding job spent coding, after its wait"),
        ("llmc_dictionary_training", "s", "Time to train and store one corpus dictionary"),
    ),
    RATIO_BUCKETS: (("compression_ratio", "", "Original UTF-8 bytes / serialized envelope bytes"),),
    SCORE_BUCKETS: (("quality_score", "", "Overall quality score of a lossy result, 0..1"),),
    GENAI_DURATION_BUCKETS: (
        ("gen_ai.client.operation.duration", "s", "GenAI operation duration"),
    ),
    GENAI_TOKEN_BUCKETS: (
        ("gen_ai.client.token.usage", "{token}", "Number of input and output tokens used"),
    ),
}
COUNTERS = (
    ("llmc_items", "Compress calls and BatchCompress items answered, by outcome"),
    ("llmc_backend_errors", "Failed model backend calls, by kind"),
    ("llmc_cache_lookups", "Cache lookups by tier and result"),
    ("llmc_cache_events", "Other cache events (store, evict, error, ...)"),
    (
        "llmc_model_calls",
        "Successful model calls, by operation (chat: generation, embeddings, coding: "
        "LOSSLESS evaluations)",
    ),
    (
        "llmc_model_tokens",
        "Tokens of successful model calls as the backend counted them, by type "
        "(input, output) and operation (chat, embeddings, coding: LOSSLESS evaluations)",
    ),
    ("llmc_dictionary_items", "Compressed items coded with a corpus dictionary, by dictionary"),
    ("llmc_dictionary_training_samples", "Samples corpus dictionaries were trained on"),
    (
        "llmc_cost",
        "Cost of successful model calls: tokens x cost.prices per million "
        "tokens (0 for a model without a price)",
    ),
)
# Gauges read from probes at each scrape: (name, label, description).
PROBED_GAUGES = (
    ("llmc_queue_depth", "queue", "Requests queued or running, per queue"),
    ("llmc_backend_inflight", "endpoint", "Calls in flight per model backend endpoint"),
    (
        "llmc_backend_up",
        "endpoint",
        "1 when a model backend endpoint is healthy, 0 when cooling down "
        "after failures or failing its health probes",
    ),
)

# The instrumentation scope of every instrument here.
METER_NAME = "llmcompress_server"

# Distinct dictionaries given their own label value; the rest count as "other" (ids are
# unbounded, a time series each is not).
DICTIONARY_LABELS = 32

# A probe returns (label, value) pairs when the gauges are read.
Probe = Callable[[], Iterable[tuple[str, int]]]
# A coding engine's (steps, tokens, slot-steps) since it started, and its occupancy now.
CodingProbe = Callable[[], tuple[int, int, int, float]]


class Metrics:
    """The service's metrics. An `EventSink` (stages, model calls, cache, backend
    errors) of every server it is passed to, and the request interceptor's counter."""

    def __init__(self, meter_provider: MeterProvider, pricing: Pricing | None = None) -> None:
        meter = meter_provider.get_meter(METER_NAME)
        self.pricing = pricing if pricing is not None else Pricing({})
        # Kept here and handed to the readers at collection (`tally.export_histograms`):
        # an OTel record costs more than a short item's whole path.
        self.histograms: dict[str, HistogramTally] = {
            name: HistogramTally(name, unit, text, buckets)
            for buckets, rows in HISTOGRAMS.items()
            for name, unit, text in rows
        }
        self._stage_histogram = self.histograms["llmc_stage_duration"]
        self._stage_keys: dict[str, AttributeKey] = {}
        self.counters: dict[str, Tally] = {name: Tally() for name, _ in COUNTERS}
        self._lookups = self.counters["llmc_cache_lookups"]
        self._cache_events = self.counters["llmc_cache_events"]
        self._cache_keys: dict[tuple[str, str], tuple[Tally, AttributeKey]] = {}
        self._latency = self.histograms["compression_latency"]
        self._ratio = self.histograms["compression_ratio"]
        self._items = self.counters["llmc_items"]
        self._item_keys: dict[
            tuple[str, int, str, str, bool], tuple[AttributeKey, AttributeKey]
        ] = {}
        for name, text in COUNTERS:
            meter.create_observable_counter(
                name, callbacks=[self.counters[name].observe], description=text
            )
        self._coding_probes: list[CodingProbe] = []
        self._dictionary_labels: set[str] = set()
        for index, (name, description) in enumerate(
            (
                ("llmc_coding_steps", "llama_decode steps of the LOSSLESS coding engine"),
                ("llmc_coding_tokens", "Tokens (rows) the LOSSLESS coding engine coded"),
                ("llmc_coding_slots", "Slot-steps (width x steps): occupancy's denominator"),
            )
        ):
            meter.create_observable_counter(
                name, callbacks=[self._coding_callback(index)], description=description
            )
        meter.create_observable_gauge(
            "llmc_coding_occupancy",
            callbacks=[lambda options: self._observe_coding(3)],
            description="Active slots / width of the LOSSLESS coding engine, now",
        )
        self._probes: dict[str, list[Probe]] = {name: [] for name, _, _ in PROBED_GAUGES}
        for name, label, description in PROBED_GAUGES:
            meter.create_observable_gauge(
                name, callbacks=[_observer(self._probes[name], label)], description=description
            )

    def export_histograms(self, readers: Sequence[MetricReader], resource: Resource) -> None:
        """Hand the histograms to `readers` (those of the MeterProvider this was built with)."""
        histograms = list(self.histograms.values())
        export_histograms(readers, lambda: histograms, InstrumentationScope(METER_NAME), resource)

    # -- gauges: read from probes at each scrape ------------------------------------------

    def watch_queue(self, probe: Probe) -> Callable[[], None]:
        """Report `probe()`'s (queue, depth) pairs as `llmc_queue_depth{queue}`; returns a
        function that stops it."""
        return _watch(self._probes["llmc_queue_depth"], probe)

    def watch_backends(self, inflight: Probe, up: Probe) -> Callable[[], None]:
        """Report a pool's (endpoint, calls in flight) and (endpoint, 1 healthy / 0 down)
        pairs as `llmc_backend_inflight` / `llmc_backend_up`; returns a function that stops it."""
        stops = [
            _watch(self._probes["llmc_backend_inflight"], inflight),
            _watch(self._probes["llmc_backend_up"], up),
        ]

        def stop() -> None:
            for one in stops:
                one()

        return stop

    def watch_coding(self, probe: CodingProbe) -> Callable[[], None]:
        """Report a coding engine's counters and occupancy; returns a function that stops it."""
        self._coding_probes.append(probe)
        probes = self._coding_probes
        return lambda: probes.remove(probe) if probe in probes else None

    def _coding_callback(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        return lambda options: self._observe_coding(index)

    def _observe_coding(self, index: int) -> Iterator[Observation]:
        values = [probe()[index] for probe in list(self._coding_probes)]
        if values:
            yield Observation(sum(values) / (len(values) if index == 3 else 1))

    # -- EventSink ------------------------------------------------------------------------

    def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
        self._stage_histogram.record_keyed(seconds, self._stage_key(stage))

    def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
        key = self._stage_key
        self._stage_histogram.record_many([(seconds, key(stage)) for stage, seconds in timings])

    def _stage_key(self, stage: str) -> AttributeKey:
        key = self._stage_keys.get(stage)
        if key is None:  # stage names are the code's own: a few dozen at most
            key = self._stage_keys[stage] = attribute_key({"stage": stage})
        return key

    def model_called(self, call: ModelCallEnded) -> None:
        attributes = call.attributes
        self.histograms["gen_ai.client.operation.duration"].record(call.seconds, attributes)
        error = attributes.get("error.type")
        if error == "CancelledError":
            return  # the caller went away, or the pool's timeout fired (the pool counts that)
        if error is not None:
            server = attributes.get("server.address", "")
            self.counters["llmc_backend_errors"].add(1, {"kind": error, "server.address": server})
            return
        labels = {"backend": call.backend, "model": call.model}
        self.counters["llmc_model_calls"].add(1, {**labels, "operation": call.operation})
        for kind, count in (("input", call.input_tokens), ("output", call.output_tokens)):
            self.histograms["gen_ai.client.token.usage"].record(
                count, {**attributes, "gen_ai.token.type": kind}
            )
            if count:
                tokens = {**labels, "type": kind, "operation": call.operation}
                self.counters["llmc_model_tokens"].add(count, tokens)
        # Added even when 0, so every model used has a cost series.
        self.counters["llmc_cost"].add(
            self.pricing.cost(call.model, call.input_tokens, call.output_tokens), labels
        )

    def cache_event(self, event: str, tier: str, seconds: float = 0.0) -> None:
        counted = self._cache_keys.get((event, tier))
        if counted is None:  # a few dozen pairs: the code's own events and tiers
            if event in ("hit", "miss"):
                counted = (self._lookups, attribute_key({"tier": tier, "result": event}))
            else:
                counted = (self._cache_events, attribute_key({"tier": tier, "event": event}))
            self._cache_keys[(event, tier)] = counted
        tally, key = counted
        tally.add_keyed(1, key)

    def backend_error(self, kind: str, endpoint: str) -> None:
        # `endpoint` may be a URL: the label is its host, as a model call's `server.address`.
        address = urlsplit(endpoint).hostname or endpoint
        self.counters["llmc_backend_errors"].add(1, {"kind": kind, "server.address": address})

    def coding_job(self, job: CodingJobEnded) -> None:
        attrs = {"kind": job.kind}
        self.histograms["llmc_coding_wait"].record(job.wait_seconds, attrs)
        self.histograms["llmc_coding_job"].record(job.coding_seconds, attrs)

    def dictionary_trained(self, seconds: float, samples: int) -> None:
        self.histograms["llmc_dictionary_training"].record(seconds)
        self.counters["llmc_dictionary_training_samples"].add(samples)

    def _dictionary_label(self, short: str) -> str:
        if short in self._dictionary_labels:
            return short
        if len(self._dictionary_labels) < DICTIONARY_LABELS:
            self._dictionary_labels.add(short)
            return short
        return "other"

    # -- request outcomes (the request interceptor) ---------------------------------------

    def compressed(self, rpc: str, stats: pb.Stats) -> None:
        keys = self._item_keys.get((rpc, stats.mode, stats.model, stats.backend, stats.degraded))
        if keys is None:
            keys = self._keys_for(rpc, stats)
        attrs, items = keys
        self._latency.record_keyed(stats.total_seconds, attrs)
        self._ratio.record_keyed(stats.ratio, attrs)
        if stats.HasField("quality"):
            self.histograms["quality_score"].record_keyed(stats.quality.overall, attrs)
        self._items.add_keyed(1, items)
        if stats.dictionary:
            label = self._dictionary_label(stats.dictionary)
            self.counters["llmc_dictionary_items"].add(
                1, {"dictionary": label, "mode": mode_label(stats.mode)}
            )

    def _keys_for(self, rpc: str, stats: pb.Stats) -> tuple[AttributeKey, AttributeKey]:
        """The attribute keys an item's metrics take, kept per (rpc, mode, model, backend,
        degraded): a few dozen at most, and building them cost µs an item."""
        mode = mode_label(stats.mode)
        attrs = {"mode": mode, "model": stats.model, "backend": stats.backend}
        outcome = "degraded" if stats.degraded else "ok"
        keys = attribute_key(attrs), attribute_key({"rpc": rpc, "outcome": outcome, "mode": mode})
        if len(self._item_keys) < 1024:  # bounded, should models churn
            self._item_keys[(rpc, stats.mode, stats.model, stats.backend, stats.degraded)] = keys
        return keys

    def reconstructed(self, response: pb.ReconstructResponse, seconds: float) -> None:
        attrs = {"mode": mode_label(response.mode), "model": response.model}
        self.histograms["reconstruction_latency"].record(seconds, attrs)

    def failed(self, rpc: str, code: grpc.StatusCode) -> None:
        self.counters["llmc_items"].add(1, {"rpc": rpc, "outcome": "error", "code": code.name})


def mode_label(mode: pb.Mode.ValueType) -> str:
    # A dict, not `Mode.from_pb`: this runs for every item, and the enum's checks cost µs.
    return _MODE_LABELS.get(mode, "unspecified")


_MODE_LABELS: dict[int, str] = {m.to_pb(): m.value for m in Mode}


def _watch(probes: list[Probe], probe: Probe) -> Callable[[], None]:
    probes.append(probe)
    return lambda: probes.remove(probe) if probe in probes else None


def _observer(
    probes: list[Probe], label: str
) -> Callable[[CallbackOptions], Iterator[Observation]]:
    """A gauge's callback: every probe's (name, value) pairs, as `label`=name."""

    def observe(options: CallbackOptions) -> Iterator[Observation]:
        for probe in list(probes):
            for name, value in probe():
                yield Observation(value, {label: name})

    return observe
