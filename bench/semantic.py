"""SEMANTIC on the evaluation set (bench/semantic_eval): a ratio-quality curve with a lead baseline.

For each target ratio, each text goes through the SEMANTIC codec and the pipeline's fallbacks
in-process (the code the server runs), is sealed, reconstructed from the sealed bytes and
scored: ratio, similarity (all-MiniLM-L6-v2), chrF, **fact retention outside the Facts line**
(the share of the set's hand-written facts whose answer is verbatim in the reconstruction's
body), misattributed sentences on the dialogue texts, the quality gate's diversions and the
time it adds. Beside each row, the **lead baseline**: the text's first bytes within the same
envelope size, coded the same way (model-coded, or brotli); the selector's value is the
difference. And for model-coded variants, the **fact ceiling**: the facts an extract chosen by
an oracle that knows the questions keeps in the same room (bench/semantic_ceiling.py); no
selector can know them, so it bounds what a fact-retention goal can ask. `make bench` calls
`measure(profile)`; `python -m bench.semantic` runs it from the command line (`--targets`,
`--variants`, `--only`, `--set dev`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.openai_server import llama_openai_server, server_config
from bench.semantic_ceiling import Oracle
from bench.semantic_eval import DEV_FACTS, FACTS, EvalText, attribution, kept_facts, load
from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.api.server import build_codecs
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.backends.router import build_text_backend
from llmcompress_server.codecs import CompressOptions
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.codecs.semantic import SemanticCodec, pack_body, summary_coding
from llmcompress_server.codecs.semantic.embedder import cosine
from llmcompress_server.codecs.semantic.entities import Entity
from llmcompress_server.codecs.semantic.extractive import read_structure
from llmcompress_server.codecs.semantic.quality import body_of, chrf
from llmcompress_server.core.config import Config, load_config
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.envelope import open_envelope, seal
from llmcompress_server.flow.pipeline import Pipeline
from llmcompress_server.telemetry.stages import StageClock

# The naive-prompt baseline of issue 4 (SmolLM2-135M, held-out chat logs): QUOTED from
# that issue, not measured by this harness.
BASELINE_QUOTED = {
    "source": "quoted from issue 4 (naive summarize-and-expand prompt), not measured here",
    "median_ratio": 9.0,
    "median_similarity": 0.46,
    "facts_kept": 0.13,
    "seconds_per_3kb": 13,
}

# The abstractive path over the OpenAI backend, against llama-cpp-python's server with the
# packaged SmolLM2 (bench/openai_server.py).
ON_SERVER = "abstractive+brotli on llama_cpp.server"
# name -> (compression.semantic_summary, compression.semantic_coder); the summary model is
# the embedded engine, except for the variant on a real OpenAI-compatible model server.
VARIANTS = {
    "abstractive+brotli": ("abstractive", "brotli"),
    "abstractive+lossless": ("abstractive", "lossless"),
    "extractive+brotli": ("extractive", "brotli"),
    "extractive+lossless": ("extractive", "lossless"),
    ON_SERVER: ("abstractive", "brotli"),
}
DEFAULT_VARIANT = "extractive+lossless"
TARGETS = (4.0, 8.0, 16.0, 32.0)
# Issue 14's acceptance point.
ACCEPTANCE_TARGET = 8.0


@dataclass(frozen=True)
class Run:
    """One variant at some targets, over the whole set or the texts named in `only`."""

    variant: str
    targets: tuple[float, ...]
    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What one profile measures: its runs, with or without the lead baseline and the fact
    ceiling (model-coded variants only)."""

    runs: tuple[Run, ...]
    lead: bool = True
    ceiling: bool = True


# The abstractive path is slow (a schema-constrained summary, then an expansion for the gate
# and one to reconstruct, each a server call of seconds): every third text of the set.
EVERY_THIRD = tuple(i.id for i in load()[::3])
PLANS = {
    # CI-sized: two short texts at the acceptance point.
    "quick": Plan(
        (Run(DEFAULT_VARIANT, (ACCEPTANCE_TARGET,), ("lines-hosts", "chat-book-club")),),
        ceiling=False,
    ),
    "standard": Plan(
        (
            Run(DEFAULT_VARIANT, TARGETS),
            Run("extractive+brotli", (ACCEPTANCE_TARGET,)),
            Run(ON_SERVER, (ACCEPTANCE_TARGET,), EVERY_THIRD),
        )
    ),
    # Issue 14's acceptance point alone (the extract and its brotli twin at target 8), every
    # text of the set: `python -m bench.run --semantic-plan acceptance` when the whole curve
    # does not fit the time at hand.
    "acceptance": Plan(
        (
            Run(DEFAULT_VARIANT, (ACCEPTANCE_TARGET,)),
            Run("extractive+brotli", (ACCEPTANCE_TARGET,)),
        )
    ),
    # The ratio-quality curve of the default path alone: every target, every text.
    "curve": Plan((Run(DEFAULT_VARIANT, TARGETS),)),
    # The abstractive path on a real OpenAI-compatible server (standard's third run) alone.
    "server": Plan((Run(ON_SERVER, (ACCEPTANCE_TARGET,), EVERY_THIRD),)),
    "full": Plan(
        (
            Run(DEFAULT_VARIANT, TARGETS),
            Run("extractive+brotli", TARGETS),
            Run(ON_SERVER, (ACCEPTANCE_TARGET,)),
        )
    ),
}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- the lead baseline --------------------------------------------------------------------


async def lead_coded(coder: LosslessCodec, text: str, budgets: Sequence[float]) -> dict[float, str]:
    """Per envelope budget, the longest word-boundary start of `text` whose model-coded
    SEMANTIC envelope fits it, coded as an extract is (pieces tokenized alone, one coding pass
    on the engine for all budgets: `summary_coding.code_prefixes`)."""
    data = text.encode("utf-8")
    model = coder.engine.identity
    cap = int(max(budgets)) + 8
    # A start the coder cannot squeeze under `cap` (text codes at under 8x), within a context.
    words = re.findall(r"\s*\S+", text[: min(8 * cap, 3 * coder.n_ctx)])
    found = await summary_coding.code_prefixes(coder, words, cap)
    if found is None:
        return {budget: "" for budget in budgets}

    def size(prefix: summary_coding.Prefix) -> int:
        body = pb.LosslessBody(
            fingerprint=found.fingerprint, stream=prefix.stream, n_tokens=prefix.tokens
        )
        semantic = pb.SemanticBody(coded=body, extractive=True)
        return len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=semantic), model))

    out: dict[float, str] = {}
    for budget in budgets:
        fit = max((p.pieces for p in found.prefixes if size(p) <= budget), default=0)
        out[budget] = "".join(words[:fit])
    return out


def lead_packed(text: str, budgets: Sequence[float]) -> dict[float, str]:
    """Per envelope budget, the longest word-boundary start of `text` whose brotli-packed
    SEMANTIC envelope fits it."""
    data = text.encode("utf-8")
    words = text.split(" ")

    def size(n: int) -> int:
        body = pack_body(" ".join(words[:n]), [])
        return len(seal(data, pb.Envelope(mode=pb.MODE_SEMANTIC, semantic=body)))

    out: dict[float, str] = {}
    for budget in budgets:
        lo, hi, fit = 0, len(words), 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if size(mid) <= budget:
                fit, lo = mid, mid + 1
            else:
                hi = mid - 1
        out[budget] = " ".join(words[:fit])
    return out


# ---- one text ---------------------------------------------------------------------------------


def _scores(
    item: EvalText, reconstruction: str, original_vector: Any, embedder: Any
) -> dict[str, Any]:
    body = body_of(reconstruction)
    kept = kept_facts(body, item.facts)
    out: dict[str, Any] = {
        "facts": len(item.facts),
        "facts_kept": sum(kept),
        "facts_kept_with_facts_line": sum(kept_facts(reconstruction, item.facts)),
        "similarity": cosine(original_vector, embedder.embed_one(reconstruction)),
        "chrf": chrf(reconstruction, item.text),
        "body_bytes": len(body.encode("utf-8")),
    }
    if item.speaker_pattern is not None:
        found = attribution(item.text, body, item.speaker_pattern)
        out["kept_sentences"] = found.kept
        out["misattributed"] = len(found.misattributed)
        out["misattributed_examples"] = [
            {"sentence": s, "under": got, "said_by": want}
            for s, got, want in found.misattributed[:3]
        ]
    return out


def _stage_seconds(timings: Sequence[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, seconds in timings:
        out[name] = out.get(name, 0.0) + seconds
    return out


async def _measure_text(
    item: EvalText,
    targets: Sequence[float],
    pipeline: Pipeline,
    codec: SemanticCodec,
    lead: bool,
    ceiling: bool,
) -> list[dict[str, Any]]:
    data = item.text.encode("utf-8")
    oracle = None
    if ceiling and codec.coder is not None:
        oracle = Oracle(codec.coder, item, read_structure(item.text))
    embedder = codec.embedder
    original_vector = await asyncio.to_thread(embedder.embed_one, item.text)
    leads: dict[float, str] = {}
    if lead:
        budgets = [len(data) / t for t in targets]
        if codec.coder is not None:
            found = await lead_coded(codec.coder, item.text, budgets)
        else:
            found = lead_packed(item.text, budgets)
        leads = {t: found[len(data) / t] for t in targets}
    rows = []
    for target in targets:
        clock = StageClock()
        t0 = time.perf_counter()
        encoded = await pipeline.encode(
            Mode.SEMANTIC, item.text, CompressOptions(target_ratio=target), clock
        )
        blob = seal(data, encoded.envelope, encoded.model)
        compress_s = time.perf_counter() - t0
        stages = _stage_seconds(clock.timings)
        mode = pb.Mode.Name(encoded.envelope.mode)
        row: dict[str, Any] = {
            "id": item.id,
            "kind": item.kind,
            "bytes": len(data),
            "target": target,
            "ratio": len(data) / len(blob),
            "mode": mode,
            "degraded": encoded.degraded,
            "reason": encoded.reason,
            # Stored exactly because the target leaves no room for a sentence (not degraded),
            # or sent to another mode by the gate or the minimum content rule (degraded).
            "exact_short": mode != "MODE_SEMANTIC" and not encoded.degraded,
            "diverted": mode != "MODE_SEMANTIC" and encoded.degraded,
            "compress_s": compress_s,
            "gate_s": stages.get("semantic.gate", 0.0),
            "coding_passes": sum(1 for n, _ in clock.timings if n in CODING_STAGES),
            "stages": stages,
        }
        if encoded.quality is not None:
            row["overall"] = encoded.quality.overall
        if mode == "MODE_SEMANTIC":
            t0 = time.perf_counter()
            decoded = await codec.decode(open_envelope(blob), StageClock())
            row["reconstruct_s"] = time.perf_counter() - t0
            if codec.coder is not None and encoded.envelope.semantic.HasField("coded"):
                # Issue 14's yardstick, in the same run: one LOSSLESS coding pass of the kept
                # text (the coded summary and facts) by the LOSSLESS codec itself.
                row["lossless_pass_s"] = await _lossless_pass(codec, blob)
                row["compress_over_lossless_pass"] = compress_s / row["lossless_pass_s"]
            row.update(_scores(item, decoded.text, original_vector, embedder))
            row["reconstruction"] = decoded.text
            if target in leads:
                row["lead"] = _scores(item, leads[target], original_vector, embedder)
            if oracle is not None and (best := await oracle.ceiling(target)) is not None:
                row["ceiling"] = best
        rows.append(row)
        brief = {k: row.get(k) for k in ("id", "target", "ratio", "mode", "facts_kept", "facts")}
        brief["lead"] = row.get("lead", {}).get("facts_kept")
        brief["ceiling"] = row.get("ceiling", {}).get("facts_kept")
        print(json.dumps(brief), file=sys.stderr)
    return rows


async def _lossless_pass(codec: SemanticCodec, blob: bytes) -> float:
    coder = codec.coder
    assert coder is not None
    body = await codec._open(open_envelope(blob), StageClock())
    kept = summary_coding.coded_text(body.summary, [Entity(f.kind, f.text) for f in body.facts])
    assert kept is not None
    tokens = (await coder.tokenize(kept.encode("utf-8"))).tokens
    t0 = time.perf_counter()
    await coder.encode_tokens(tokens)
    return time.perf_counter() - t0


# Stages that make one token-by-token pass of the model over a body.
CODING_STAGES = ("semantic.code", "semantic.verify")


# ---- summaries ---------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the curve: the figures over these items at one target."""
    sem = [r for r in rows if r["mode"] == "MODE_SEMANTIC"]
    facts = sum(r["facts"] for r in sem)
    lead = [r["lead"] for r in sem if "lead" in r]
    ceiling = [r["ceiling"] for r in sem if "ceiling" in r]
    dialogue = [r for r in sem if "misattributed" in r]
    out: dict[str, Any] = {
        "texts": len(rows),
        "stored_semantic": len(sem),
        "stored_exactly_too_short": sum(r["exact_short"] for r in rows),
        "gate_diverted": sum(r["diverted"] for r in rows),
        "median_ratio": _median([r["ratio"] for r in rows]),
        "median_ratio_semantic": _median([r["ratio"] for r in sem]),
        "median_similarity": _median([r["similarity"] for r in sem]),
        "median_chrf": _median([r["chrf"] for r in sem]),
        "facts": facts,
        "facts_kept": sum(r["facts_kept"] for r in sem),
        "fact_retention": sum(r["facts_kept"] for r in sem) / facts if facts else None,
        "fact_retention_with_facts_line": (
            sum(r["facts_kept_with_facts_line"] for r in sem) / facts if facts else None
        ),
        "dialogue_kept_sentences": sum(r["kept_sentences"] for r in dialogue),
        "misattributed": sum(r["misattributed"] for r in dialogue),
        "median_overall": _median([r["overall"] for r in sem if "overall" in r]),
        "gate_s_mean": statistics.mean(r["gate_s"] for r in rows) if rows else None,
        "compress_s_median": _median([r["compress_s"] for r in rows]),
        "compress_s_p95": _pct([r["compress_s"] for r in rows], 0.95),
        "reconstruct_s_median": _median([r["reconstruct_s"] for r in sem]),
        "coding_passes_max": max((r["coding_passes"] for r in rows), default=0),
        "compress_over_lossless_pass_median": _median(
            [r["compress_over_lossless_pass"] for r in sem if "compress_over_lossless_pass" in r]
        ),
        "rank_share_median": _median(
            [r["stages"].get("semantic.rank", 0.0) / r["compress_s"] for r in sem]
        ),
        "stage_s_mean": {
            name: statistics.mean(r["stages"].get(name, 0.0) for r in rows)
            for name in sorted({n for r in rows for n in r["stages"]})
        }
        if rows
        else {},
        "coding_passes_mean": statistics.mean(r["coding_passes"] for r in rows) if rows else None,
    }
    if lead:
        out["lead_facts_kept"] = sum(r["facts_kept"] for r in lead)
        out["lead_fact_retention"] = out["lead_facts_kept"] / facts if facts else None
        out["lead_median_similarity"] = _median([r["similarity"] for r in lead])
        out["lead_median_chrf"] = _median([r["chrf"] for r in lead])
        out["lead_misattributed"] = sum(r.get("misattributed", 0) for r in lead)
    # A ceiling only over every SEMANTIC text (a text longer than one context has none).
    whole_ceiling = bool(ceiling) and len(ceiling) == len(sem)
    if whole_ceiling:
        out["ceiling_facts_kept"] = sum(r["facts_kept"] for r in ceiling)
        out["ceiling_fact_retention"] = out["ceiling_facts_kept"] / facts if facts else None
    by_kind: dict[str, list[int]] = {}
    for r in sem:
        k = by_kind.setdefault(r["kind"], [0, 0, 0, 0])
        k[0] += r["facts_kept"]
        k[1] += r["facts"]
        k[2] += r.get("lead", {}).get("facts_kept", 0)
        k[3] += r.get("ceiling", {}).get("facts_kept", 0)
    out["facts_by_kind"] = {
        k: {"kept": v[0], "of": v[1], "lead": v[2], **({"ceiling": v[3]} if whole_ceiling else {})}
        for k, v in by_kind.items()
    }
    return out


# ---- running -----------------------------------------------------------------------------------


async def _over_texts(
    items: list[EvalText],
    targets: Sequence[float],
    pipeline: Pipeline,
    codec: SemanticCodec,
    lead: bool,
    ceiling: bool,
    workers: int,
) -> list[dict[str, Any]]:
    """Every text at every target, one text per engine worker at a time (each codes with
    one thread)."""
    gate = asyncio.Semaphore(workers)

    async def one(item: EvalText) -> list[dict[str, Any]]:
        async with gate:
            return await _measure_text(item, targets, pipeline, codec, lead, ceiling)

    groups = await asyncio.gather(*(one(i) for i in items))
    return [r for group in groups for r in group]


def variant_config(
    name: str, workers: int, threshold: float | None = None, server: str | None = None
) -> Config:
    summary, coder = VARIANTS[name]
    model: dict[str, Any] = {"embedded": {"preload": False, "workers": workers}}
    overrides: dict[str, Any] = {
        "model": model,
        "compression": {"semantic_summary": summary, "semantic_coder": coder},
    }
    if server is not None:
        model.update(server_config(server))
        # One request at a time on a shared 2-core box: seconds to minutes per call.
        overrides["llm"] = {"timeout": 900.0, "max_retries": 0}
    if threshold is not None:
        model["quality_threshold"] = threshold
    return load_config(environ={}, overrides=overrides)


async def run_plan(
    plan: Plan, workers: int = 2, threshold: float | None = None, facts: Path = FACTS
) -> dict[str, Any]:
    everything = load(facts)
    base = variant_config(DEFAULT_VARIANT, workers, threshold)
    engine = EmbeddedEngine(base.model.embedded)
    await engine.start()
    curve: dict[str, dict[str, Any]] = {}
    rows_out: dict[str, list[dict[str, Any]]] = {}
    t_start = time.perf_counter()
    try:
        for run in plan.runs:
            items = [i for i in everything if not run.only or i.id in run.only]
            print(f"== {run.variant} at {run.targets} on {len(items)} texts", file=sys.stderr)
            if run.variant == ON_SERVER:
                rows = await _on_server(run, items, engine, workers, threshold)
            else:
                config = variant_config(run.variant, workers, threshold)
                codecs = build_codecs(config, engine, engine)
                codec = codecs[Mode.SEMANTIC]
                assert isinstance(codec, SemanticCodec)
                pipeline = Pipeline(config, codecs)
                rows = await _over_texts(
                    items, run.targets, pipeline, codec, plan.lead, plan.ceiling, workers
                )
            partial = run.only and len(items) < len(everything)
            # The default variant keeps its name on any texts: the report reads it.
            named = partial and run.variant != DEFAULT_VARIANT
            name = f"{run.variant} ({len(items)} texts)" if named else run.variant
            rows_out[name] = rows
            curve[name] = {
                f"{t:g}": summarize([r for r in rows if r["target"] == t]) for t in run.targets
            }
            if named and DEFAULT_VARIANT in rows_out:
                # The default variant on the same texts, for a side-by-side row.
                ids = {i.id for i in items}
                mine = [r for r in rows_out[DEFAULT_VARIANT] if r["id"] in ids]
                curve[f"{DEFAULT_VARIANT} (the same {len(items)} texts)"] = {
                    f"{t:g}": summarize([r for r in mine if r["target"] == t]) for t in run.targets
                }
    finally:
        await engine.close()
    return {
        "eval_set": f"bench/{facts.parent.name} ({len(everything)} texts, "
        f"{sum(len(i.facts) for i in everything)} facts)",
        "model": base.model.embedded.model_name,
        "embedding_model": "all-MiniLM-L6-v2",
        "quality_threshold": base.model.quality_threshold,
        "quality_gate": base.compression.quality_gate.value,
        "workers": workers,
        "wall_s": time.perf_counter() - t_start,
        "curve": curve,
        "baseline_naive_prompt": BASELINE_QUOTED,
        "rows": rows_out,
    }


async def _on_server(
    run: Run,
    items: list[EvalText],
    engine: EmbeddedEngine,
    workers: int,
    threshold: float | None,
) -> list[dict[str, Any]]:
    """The abstractive path over the OpenAI backend against a real llama_cpp.server (the lead
    baseline is brotli-packed, as the abstractive body is)."""
    async with llama_openai_server() as url:
        config = variant_config(run.variant, workers, threshold, server=url)
        backend = build_text_backend(config, engine)
        assert backend is not None
        codecs = build_codecs(config, engine, backend)
        codec = codecs[Mode.SEMANTIC]
        assert isinstance(codec, SemanticCodec)
        try:
            # The server answers one request at a time.
            return await _over_texts(
                items, run.targets, Pipeline(config, codecs), codec, True, False, workers=1
            )
        finally:
            await backend.close()


def measure(profile: str = "standard") -> dict[str, Any]:
    """The curve for `make bench`'s profile (starts and closes its own embedded engine)."""
    return asyncio.run(run_plan(PLANS[profile]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    parser.add_argument("--variants", default=DEFAULT_VARIANT, help=",".join(VARIANTS))
    parser.add_argument("--only", default="", help="comma-separated text ids of the set")
    parser.add_argument("--no-lead", action="store_true", help="skip the lead baseline")
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the fact ceiling (bench/semantic_ceiling.py)",
    )
    parser.add_argument("--workers", type=int, default=2, help="texts at a time")
    parser.add_argument(
        "--quality-threshold", type=float, help="model.quality_threshold (default: the server's)"
    )
    parser.add_argument(
        "--set",
        choices=("eval", "dev"),
        default="eval",
        help="eval: the held-out evaluation set (bench/semantic_eval, what make bench reports); "
        "dev: the development set (bench/semantic_dev), the one to tune SEMANTIC on",
    )
    parser.add_argument("-o", "--output", help="write the JSON result (with every row) here")
    args = parser.parse_args(argv)
    targets = tuple(float(t) for t in args.targets.split(","))
    only = tuple(x for x in args.only.split(",") if x)
    runs = tuple(Run(v, targets, only) for v in args.variants.split(","))
    plan = Plan(runs, not args.no_lead, not args.no_ceiling)
    facts = DEV_FACTS if args.set == "dev" else FACTS
    result = asyncio.run(run_plan(plan, args.workers, args.quality_threshold, facts))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
