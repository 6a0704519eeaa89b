"""The benchmark run: `python -m bench.run --profile quick|standard|full` (`make bench*`).

One run measures every mode the server offers, the baselines (zstd -19, brotli -11,
bare grpc.aio echo) and the optional sections, then writes report.md, results.json
and PNG plots to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from llmcompress import TLS
from llmcompress.connect import add_connection_arguments, connection, connection_problem
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import create_server
from llmcompress_server.core.config import load_config

from . import modes as mode_bench
from .baselines import compression_baselines, echo_throughput
from .overhead import service_overhead

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT / "corpus" / "passages.jsonl"
DEFAULT_EDGES = [1024, 2048, 4096]
# Sections beside the per-mode tables; all but "overhead" are bench.<name> modules.
SECTIONS = ("lossless", "semantic", "cache", "overhead", "grouping", "streaming", "dictionaries")
Rows = list[dict[str, str]]


@dataclass(frozen=True)
class Subset:
    """A fixed, documented choice of passages: every `step`-th from `start`, or the
    `shortest` n passages, or all."""

    step: int = 1
    start: int = 0
    shortest: int = 0

    def pick(self, rows: Rows) -> Rows:
        if self.shortest:
            by_size = sorted(rows, key=lambda r: (len(r["text"].encode("utf-8")), r["id"]))
            return by_size[: self.shortest]
        return rows[self.start :: self.step]

    def describe(self) -> str:
        if self.shortest:
            return f"the {self.shortest} shortest passages"
        if self.step == 1:
            return "every passage"
        return f"every {_ordinal(self.step)} passage from #{self.start}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Profile:
    """What one `make bench*` target runs. Model modes are slow (SmolLM2 on 2 cores:
    LOSSLESS ~300 B/s each way), so they run on fixed subsets."""

    name: str
    zstd: Subset  # the ZSTD mode and the zstd/brotli baselines
    model_modes: Subset  # LOSSLESS and SEMANTIC through the server, per bucket
    lossless_section: Subset  # bench.lossless (LOSSLESS vs raw engine speed)
    # bench.lossless's speed sections (default width against width 1, the 32 KB text, row
    # models): tens of minutes of the model, so not in the quick profile CI runs.
    lossless_speed: bool
    cache_section: Subset
    overhead_items: int  # BatchCompress items against the simulated Ollama
    overhead_sequential: int
    echo_seconds: float


PROFILES = {
    "quick": Profile(
        "quick",
        zstd=Subset(),
        model_modes=Subset(shortest=2),
        lossless_section=Subset(shortest=2),
        lossless_speed=False,
        cache_section=Subset(shortest=8),
        overhead_items=200,
        overhead_sequential=5,
        echo_seconds=1.5,
    ),
    "standard": Profile(
        "standard",
        zstd=Subset(),
        model_modes=Subset(step=16),
        # Issue 3's subset: every 4th passage (~116 KB). bench.lossless codes one
        # passage per core in three token-by-token passes (compress, reconstruct,
        # raw engine), about 15 min on an idle 2-core machine.
        lossless_section=Subset(step=4),
        lossless_speed=True,
        cache_section=Subset(),
        overhead_items=2000,
        overhead_sequential=20,
        echo_seconds=3.0,
    ),
    "full": Profile(
        "full",
        zstd=Subset(),
        model_modes=Subset(),
        lossless_section=Subset(),
        lossless_speed=True,
        cache_section=Subset(),
        overhead_items=20000,
        overhead_sequential=50,
        echo_seconds=5.0,
    ),
}


def load_passages(path: Path) -> Rows:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("text"), str):
            raise ValueError(f"{path}:{n}: each line needs a string field 'text'")
        rows.append({"id": str(row.get("id", n)), "text": row["text"]})
    return rows


def machine() -> dict[str, Any]:
    """Where the numbers came from; the load average says how busy the machine was."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = {}
    for dist in ("llama-cpp-python", "grpcio", "zstandard", "brotli"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


async def optional_section(module: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run `<module>.measure(*args, **kwargs)` when the module is on this build; never fail
    the run."""
    if importlib.util.find_spec(module) is None:
        path = module.replace(".", "/") + ".py"
        return {
            "available": False,
            "reason": f"section not available on this build ({path} is missing)",
        }
    measure: Callable[..., Any] = importlib.import_module(module).measure
    try:
        if inspect.iscoroutinefunction(measure):
            result = await measure(*args, **kwargs)
        else:  # may load a model or start its own event loop: keep it off ours
            result = await asyncio.to_thread(measure, *args, **kwargs)
    except Exception as exc:
        traceback.print_exc()
        return {"available": False, "failed": True, "reason": f"{module}.measure failed: {exc!r}"}
    return {"available": True, **dict(result)}


async def overhead_section(rows: Rows, profile: Profile) -> dict[str, Any]:
    try:
        return await service_overhead(
            rows, items=profile.overhead_items, sequential=profile.overhead_sequential
        )
    except Exception as exc:
        traceback.print_exc()
        return {"available": False, "failed": True, "reason": f"service overhead failed: {exc!r}"}


def problems(results: dict[str, Any]) -> list[str]:
    """What makes this run wrong rather than slow: lost items, inexact round trips in
    exact modes, ratios that disagree with the server, sections that crashed."""
    found = []
    for mode, entry in results["modes"].items():
        for tier, data in entry.get("tiers", {}).items():
            for f in data["failures"]:
                found.append(f"{mode}/{tier}: {f['id']} failed: {f['code']} {f['details']}")
            for it in data["items"]:
                where = f"{mode}/{tier}: {it['id']}"
                if it["stored_mode"] in mode_bench.EXACT_MODES and not it["exact"]:
                    found.append(f"{where}: stored as {it['stored_mode']} but not exact")
                if (
                    it["exact"] != it["server_exact"]
                    and it["stored_mode"] in mode_bench.EXACT_MODES
                ):
                    found.append(f"{where}: server says exact={it['server_exact']}")
                if abs(it["ratio"] - it["server_ratio"]) > 1e-9 * it["ratio"]:
                    found.append(
                        f"{where}: ratio {it['ratio']:.6f} from the envelope, "
                        f"{it['server_ratio']:.6f} in Stats"
                    )
    for name in ("lossless", "semantic", "cache", "overhead"):
        if results.get(name, {}).get("failed"):
            found.append(results[name]["reason"])
    return found


def _with_token(details: Any, token: str) -> Any:
    pair = ("authorization", f"Bearer {token}")
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), pair))


# grpc.aio files a channel interceptor under its first matching kind only: one class per kind.
class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` (the harness's stubs pass no metadata)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.token), request)


class _StreamBearer(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self.token), requests)


def open_channel(target: str, tls: TLS | None, token: str | None) -> grpc.aio.Channel:
    """A channel to --server with `llmc`'s connection options (--token, --tls-*)."""
    interceptors: list[Any] | None = [_UnaryBearer(token), _StreamBearer(token)] if token else None
    if tls is None:
        return grpc.aio.insecure_channel(target, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=tls.channel_options(), interceptors=interceptors
    )


async def measure_server(
    target: str,
    rows: Rows,
    profile: Profile,
    opts: argparse.Namespace,
    tls: TLS | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Every mode the server offers, per model tier, per size bucket."""
    out: dict[str, Any] = {}
    async with open_channel(target, tls, token) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        offered = await mode_bench.discover_modes(stub, opts.modes or list(mode_bench.MODES))
        for mode, why_not in offered.items():
            if why_not:
                out[mode] = {"available": False, "reason": why_not}
                continue
            subset = profile.zstd if mode == "zstd" else profile.model_modes
            picked = subset.pick(rows)
            entry: dict[str, Any] = {
                "available": True,
                "subset": subset.describe(),
                "tiers": {},
            }
            for tier in opts.models:
                t0 = time.perf_counter()
                items, failures = await mode_bench.measure_mode(
                    stub, mode, picked, opts.sizes, opts.iterations, tier
                )
                print(
                    f"bench: {mode}/{tier}: {len(items)} items, {len(failures)} failed, "
                    f"{time.perf_counter() - t0:.1f}s",
                    file=sys.stderr,
                )
                entry["tiers"][tier] = {
                    "groups": mode_bench.group_results(items, opts.sizes) if items else {},
                    "failures": failures,
                    "items": mode_bench.as_json(items),
                }
            if mode == "zstd":
                entry["batch"] = await mode_bench.batch_throughput(stub, mode, picked)
            out[mode] = entry
    return out


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    profile = PROFILES[opts.profile]
    semantic_plan = opts.semantic_plan or profile.name
    rows = load_passages(opts.corpus)
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "profile": asdict(profile),
        "options": {
            "server": opts.server or "in-process",
            "models": opts.models,
            "sizes": opts.sizes,
            "iterations": opts.iterations,
        },
        "corpus": {
            # Relative to the checkout when inside it: a report names no machine's paths.
            "path": str(
                opts.corpus.resolve().relative_to(ROOT)
                if opts.corpus.resolve().is_relative_to(ROOT)
                else opts.corpus
            ),
            "passages": len(rows),
            "bytes": sum(len(r["text"].encode("utf-8")) for r in rows),
            "sha256": hashlib.sha256(opts.corpus.read_bytes()).hexdigest(),
        },
        "subsets": {
            "zstd and baselines": profile.zstd.describe(),
            "lossless/semantic through the server": profile.model_modes.describe(),
            "bench.lossless": profile.lossless_section.describe(),
            "bench.semantic": f"the evaluation set bench/semantic_eval (PLANS[{semantic_plan!r}] "
            "in bench/semantic.py)",
            "bench.cache": profile.cache_section.describe(),
            "bench.grouping": "the first 25 (8 on the 2-slot simulator) passages of at least "
            "40 words, 4 times each with its own ticket number",
        },
    }

    if opts.server:
        results["modes"] = await measure_server(opts.server, rows, profile, opts, *connection(opts))
    else:
        config = load_config(opts.config, overrides=_in_process_overrides())
        app = await create_server(config)
        await app.start()
        try:
            results["modes"] = await measure_server(app.address, rows, profile, opts)
        finally:
            await app.stop(grace=0)

    texts = {r["id"]: r["text"] for r in rows}
    results["baselines"] = {"compression": compression_baselines(texts)}
    results["baselines"]["echo"] = await echo_throughput(profile.echo_seconds)

    subsets = {
        "lossless": profile.lossless_section,
        "cache": profile.cache_section,
    }
    for name in SECTIONS:
        if name not in opts.sections:
            results[name] = {"available": False, "reason": "not selected (--sections)"}
        elif opts.server:
            results[name] = {"available": False, "reason": "in-process only, not with --server"}
        elif name == "overhead":
            results[name] = await overhead_section(rows, profile)
        elif name == "streaming":
            # Its own corpus (corpus/debian-changelogs) and servers, each a process of its own.
            quick = profile.name == "quick"
            results[name] = await optional_section(
                "bench.streaming", limit=200 if quick else None, repeats=1 if quick else 2
            )
        elif name == "dictionaries":
            # Its own corpora (corpus/debian-changelogs, split by package) and server process.
            lossless = 0 if profile.name == "quick" else 12_000
            results[name] = await optional_section("bench.dictionaries", lossless=lossless)
        elif name == "grouping":
            # Its own near-duplicate corpus, built from the passages (bench/grouping.py).
            results[name] = await optional_section("bench.grouping", rows)
        elif name == "semantic":
            # Its own fixed set (bench/semantic_eval), not the corpus subsets.
            results[name] = await optional_section("bench.semantic", semantic_plan)
        elif name == "lossless":
            results[name] = await optional_section(
                "bench.lossless", subsets[name].pick(rows), speed=profile.lossless_speed
            )
        else:
            results[name] = await optional_section(f"bench.{name}", subsets[name].pick(rows))
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.perf_counter() - t_start
    results["problems"] = problems(results)
    return results


def _in_process_overrides() -> dict[str, Any]:
    # Loopback on any free port, no metrics port; the model loads on the first
    # model call, which mode discovery makes before anything is timed.
    return {
        "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 2},
        "monitoring": {"enable_prometheus": False},
        "model": {"embedded": {"preload": False}},
    }


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda value: [kind(v.strip()) for v in value.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m bench.run`."""
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="standard",
        help="quick: ZSTD + baselines + a tiny model sample (<3 min); standard: `make bench`; "
        "full: the whole corpus in every mode (default: %(default)s)",
    )
    parser.add_argument(
        "--server",
        help="benchmark this running server (host:port) instead of an in-process one; "
        "the in-process-only sections are then reported as not measured",
    )
    parser.add_argument("--config", help="YAML config for the in-process server")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="JSONL, one {'id', 'text'} per line (default: %(default)s)",
    )
    parser.add_argument(
        "--models",
        type=_csv(str),
        default=["default"],
        help="model tiers to request, comma-separated: default,low,standard,high; results are "
        "labelled with the model and backend the server reports (default: default)",
    )
    parser.add_argument(
        "--sizes",
        type=_csv(int),
        default=DEFAULT_EDGES,
        help="text-size bucket edges in bytes, comma-separated (default: 1024,2048,4096)",
    )
    parser.add_argument(
        "--iterations", type=int, default=1, help="Compress+Reconstruct repeats per text"
    )
    parser.add_argument(
        "--modes",
        type=_csv(str),
        default=[],
        help="only these modes, comma-separated: zstd,lossless,semantic (default: all offered)",
    )
    parser.add_argument(
        "--sections",
        type=_csv(str),
        default=list(SECTIONS),
        help="extra sections to run, comma-separated, or '' for none: "
        f"{','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-out",
        help="output directory for report.md, results.json and plots (default: %(default)s, "
        "ignored by git; committed reports go to their own folder under docs/benchmarks/)",
    )
    parser.add_argument(
        "--semantic-plan",
        choices=["quick", "acceptance", "curve", "server", "standard", "full"],
        help="bench.semantic's plan (PLANS in bench/semantic.py) instead of the profile's own; "
        "`acceptance` is target 8 alone over the whole evaluation set, `curve` the default "
        "path at every target, `server` the abstractive path on a real OpenAI-compatible server",
    )
    add_connection_arguments(parser)  # for --server


def check_arguments(opts: argparse.Namespace) -> str | None:
    """An actionable message for bad options, else None."""
    if not opts.server and (opts.token or opts.tls_ca or opts.tls_cert):
        return "--token and --tls-* are for a running server: give --server too"
    problem = connection_problem(opts)
    if problem:
        return problem
    bad = [m for m in opts.models if m not in mode_bench.TIERS]
    if bad:
        return f"--models: unknown tier(s) {bad}; use {', '.join(mode_bench.TIERS)}"
    bad = [m for m in opts.sections if m not in SECTIONS]
    if bad:
        return f"--sections: unknown section(s) {bad}; use {', '.join(SECTIONS)}"
    bad = [m for m in opts.modes if m not in mode_bench.MODES]
    if bad:
        return f"--modes: unknown mode(s) {bad}; use {', '.join(mode_bench.MODES)}"
    if not opts.sizes or opts.sizes != sorted(set(opts.sizes)) or opts.sizes[0] <= 0:
        return "--sizes: give ascending positive byte edges, e.g. 1024,2048,4096"
    if opts.iterations < 1:
        return "--iterations must be at least 1"
    if not opts.corpus.is_file():
        return f"--corpus: {opts.corpus} does not exist"
    return None


def execute(opts: argparse.Namespace) -> int:
    """Run, write the outputs, print where they are; status 1 if the run found problems."""
    from .report import write_outputs

    bad_option = check_arguments(opts)
    if bad_option:
        print(f"bench: {bad_option}", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(run(opts))
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        print(
            f"bench: cannot reach a server at {opts.server} ({err.details()}); "
            "start one with `llmc serve` or leave out --server for an in-process one",
            file=sys.stderr,
        )
        return 3
    written = write_outputs(results, opts.out)
    print(
        f"bench: {results['wall_seconds']:.0f}s, wrote {', '.join(str(p) for p in written)}",
        file=sys.stderr,
    )
    for problem in results["problems"]:
        print(f"bench: PROBLEM: {problem}", file=sys.stderr)
    return 1 if results["problems"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    add_arguments(parser)
    return execute(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
