"""LOSSLESS benchmark: exactness and ratio against zstd -19 / brotli -11, and the coding engine
wide (its default width, or WIDE) against width 1, in one run on one machine.

`measure(passages)` runs, on in-process servers (the real gRPC server and model):
- corpus: every passage compressed and reconstructed at the default width,
  32 calls in flight (the engine batches them): exact/total, ratios, B/s;
- batch: BatchCompress items/s over a fixed set of passages, wide engine
  against width 1, quiet and again with a CPU-bound process beside it;
- text_32k: one 32 KB text's compress and reconstruct B/s at both widths, the
  cost of verify in coding passes, and the raw engine speed (no coding);
- row_models: the same 32 KB text compressed with the identity row model and the
  mixer (coding/mixer.py) side by side: the mixer's fraction of the speed, bits per byte.
`python -m bench.lossless [--every 4] [--limit N] [--no-speed] [--row-model NAME]
[--out DIR | -o out.json]`, or
`--text PATH --no-speed` for one whole file as one text (such as the Canterbury alice29.txt:
its bits per byte are the figure published compressors quote).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import brotli
import grpc
import zstandard

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App, create_server
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.coding.fingerprint import fingerprint_fields
from llmcompress_server.core.config import Config, EmbeddedConfig, load_config
from llmcompress_server.core.domain import Mode

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus" / "passages.jsonl"
ALICE = ROOT / "corpus" / "alice29.txt"
BATCH_ITEMS = 24  # passages per BatchCompress run: every 7th of the corpus
TEXT_BYTES = 32 * 1024
# The width measured against width 1 when the server's default is 1 (config.py).
WIDE = 16


def _config(width: int | None = None, row_model: str | None = None) -> Config:
    embedded: dict[str, Any] = {"preload": False}
    if width is not None:
        embedded["coding_width"] = width
    if row_model is not None:
        embedded["coding_row_model"] = row_model
    return load_config(
        environ={},
        overrides={
            "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 2},
            "model": {"embedded": embedded},
            "monitoring": {"enable_prometheus": False},
            "performance": {"max_queue": 256},
            "cache": {"enabled": False},
        },
    )


async def _server(width: int | None = None, row_model: str | None = None) -> App:
    app = await create_server(_config(width, row_model))
    await app.start()
    assert app.engine is not None
    await app.engine.start()
    return app


def _codec(app: App) -> LosslessCodec:
    codec = app.pipeline.codecs[Mode.LOSSLESS]
    assert isinstance(codec, LosslessCodec)
    return codec


def _stub(channel: grpc.aio.Channel) -> pb_grpc.CompressionServiceStub:
    return pb_grpc.CompressionServiceStub(channel)


# -- corpus: exactness and ratio --------------------------------------------------------


async def _corpus(
    passages: list[dict[str, str]], verify: bool, row_model: str | None, reconstruct: bool = True
) -> dict[str, Any]:
    app = await _server(row_model=row_model)
    codec = _codec(app)
    zstd = zstandard.ZstdCompressor(level=19)
    try:
        # A client window under the engine's queue bound (model.embedded.queue_size).
        window = asyncio.Semaphore(32)
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = _stub(channel)

            async def compress(text: str) -> pb.CompressResponse:
                async with window:
                    request = pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, verify=verify)
                    return await stub.Compress(request)

            async def reconstruct_one(envelope: bytes) -> pb.ReconstructResponse:
                async with window:
                    return await stub.Reconstruct(pb.ReconstructRequest(envelope=envelope))

            t0 = time.perf_counter()
            sent = await asyncio.gather(*(compress(p["text"]) for p in passages))
            t1 = time.perf_counter()
            if reconstruct:
                back = await asyncio.gather(*(reconstruct_one(r.envelope) for r in sent))
            else:  # ratios only: one coding pass; exactness is then not checked
                back = [pb.ReconstructResponse(exact=False) for _ in sent]
            t2 = time.perf_counter()
    finally:
        await app.stop(grace=0)
    rows = []
    # The baselines' own speed on the same texts (one core, one text at a time).
    baseline_seconds = {"zstd19": 0.0, "brotli11": 0.0}
    for p, r, b in zip(passages, sent, back, strict=True):
        data = p["text"].encode("utf-8")
        env = pb.Envelope.FromString(r.envelope)
        tz = time.perf_counter()
        zstd19 = len(zstd.compress(data))
        tb = time.perf_counter()
        brotli11 = len(brotli.compress(data, quality=11))
        baseline_seconds["zstd19"] += tb - tz
        baseline_seconds["brotli11"] += time.perf_counter() - tb
        rows.append(
            {
                "id": p.get("id", ""),
                "bytes": len(data),
                "envelope": len(r.envelope),
                "stream": len(env.lossless.stream),
                "streams": max(1, len(env.lossless.chunk_words)),
                "mode": pb.Mode.Name(r.stats.mode),
                "reason": r.stats.reason,
                # Bytes coded through split spans or byte tokens (tokens.ExactTokenizer).
                "piecewise": r.stats.piecewise_bytes,
                "exact": b.exact and b.text == p["text"],
                "zstd19": zstd19,
                "brotli11": brotli11,
            }
        )
    total = sum(r["bytes"] for r in rows)
    # Format v3 stores the build as a digest: the fields are this server's.
    written = pb.Envelope.FromString(sent[0].envelope).lossless.fingerprint
    fp = fingerprint_fields(codec.expanded(written))

    def ratio(key: str) -> float:
        return total / sum(r[key] for r in rows)

    return {
        "passages": len(rows),
        "bytes": total,
        "exact": sum(r["exact"] for r in rows),
        "total": len(rows),
        "degraded": sum(r["mode"] != "MODE_LOSSLESS" for r in rows),
        "lossless_ratio": ratio("envelope"),
        "lossless_ratio_median": statistics.median(r["bytes"] / r["envelope"] for r in rows),
        "zstd19_ratio": ratio("zstd19"),
        "brotli11_ratio": ratio("brotli11"),
        "ratio_vs_brotli11": ratio("envelope") / ratio("brotli11"),
        "stream_ratio": ratio("stream"),
        "bits_per_byte": 8 * sum(r["envelope"] for r in rows) / total,
        "stream_bits_per_byte": 8 * sum(r["stream"] for r in rows) / total,
        "piecewise_bytes": sum(r["piecewise"] for r in rows),
        "piecewise_share": sum(r["piecewise"] for r in rows) / total,
        "mean_overhead_bytes": statistics.mean(r["envelope"] - r["stream"] for r in rows),
        "verify": verify,
        # 32 calls in flight: the engine's B/s on a full queue.
        "compress_bytes_per_s": total / (t1 - t0),
        "reconstructed": reconstruct,
        "reconstruct_bytes_per_s": total / (t2 - t1) if reconstruct else 0.0,
        "zstd19_bytes_per_s": total / baseline_seconds["zstd19"],
        "brotli11_bytes_per_s": total / baseline_seconds["brotli11"],
        "engine": fp["engine"],
        "width": fp["width"],
        "threads": fp["threads"],
        "n_ctx": fp["n_ctx"],
        "schedule": fp["schedule"],
        "row_model": fp["row_model"],
        "by_size": _by_size(rows),
        "rows": rows,
    }


# Where the fixed header stops mattering: ratios per passage size.
SIZE_EDGES = (1024, 2048, 4096)


def _by_size(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    edges = [0, *SIZE_EDGES, None]
    for lo, hi in itertools.pairwise(edges):
        group = [r for r in rows if r["bytes"] >= lo and (hi is None or r["bytes"] < hi)]
        if not group:
            continue
        total = sum(r["bytes"] for r in group)
        ours = total / sum(r["envelope"] for r in group)
        brotli11 = total / sum(r["brotli11"] for r in group)
        stream = total / sum(r["stream"] for r in group)
        name = f"{lo // 1024}-{hi // 1024} KB" if hi else f">={lo // 1024} KB"
        out[name] = {
            "passages": len(group),
            "lossless_ratio": ours,
            "brotli11_ratio": brotli11,
            "vs_brotli11": ours / brotli11,
            "stream_vs_brotli11": stream / brotli11,
        }
    return out


# -- speed: the wide engine against width 1 ------------------------------------------------


async def _batch(app: App, passages: list[dict[str, str]]) -> dict[str, float]:
    """One BatchCompress stream of every passage (verify on, as users run it)."""
    coding = app.engine.coding if app.engine is not None else None
    assert coding is not None
    rows0, slots0 = coding.stats.rows, coding.stats.slot_steps

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for n, p in enumerate(passages):
            yield pb.BatchCompressRequest(
                id=str(n), request=pb.CompressRequest(text=p["text"], mode=pb.MODE_LOSSLESS)
            )

    async with grpc.aio.insecure_channel(app.address) as channel:
        t0 = time.perf_counter()
        answers = [a async for a in _stub(channel).BatchCompress(requests())]
        seconds = time.perf_counter() - t0
    ok = sum(a.HasField("result") and a.result.stats.mode == pb.MODE_LOSSLESS for a in answers)
    slots = coding.stats.slot_steps - slots0
    return {
        "items": len(answers),
        "lossless_items": ok,
        "seconds": seconds,
        "items_per_s": len(answers) / seconds,
        "occupancy": (coding.stats.rows - rows0) / slots if slots else 0.0,
    }


async def _text(app: App, text: str) -> dict[str, float]:
    """One long text: compress without and with verify, reconstruct, and the raw engine."""
    data = text.encode("utf-8")
    codec = _codec(app)
    coding = app.engine.coding if app.engine is not None else None
    assert coding is not None
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = _stub(channel)
        t0 = time.perf_counter()
        plain = await stub.Compress(
            pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, verify=False)
        )
        t1 = time.perf_counter()
        await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, verify=True))
        t2 = time.perf_counter()
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=plain.envelope))
        t3 = time.perf_counter()
    tokens = (await codec.tokenize(data)).tokens
    rows0, slots0 = coding.stats.rows, coding.stats.slot_steps
    t4 = time.perf_counter()
    await codec.evaluate(tokens)
    raw_s = time.perf_counter() - t4
    slots = coding.stats.slot_steps - slots0
    env = pb.Envelope.FromString(plain.envelope)
    return {
        "bytes": len(data),
        "tokens": len(tokens),
        "streams": max(1, len(env.lossless.chunk_words)),
        "envelope": len(plain.envelope),
        "exact": float(back.text == text),
        "compress_bytes_per_s": len(data) / (t1 - t0),
        "compress_verify_bytes_per_s": len(data) / (t2 - t1),
        "reconstruct_bytes_per_s": len(data) / (t3 - t2),
        # Compress with verify in coding passes (compress alone = 1).
        "verify_cost_passes": (t2 - t1) / (t1 - t0),
        "raw_tokens_per_s": len(tokens) / raw_s,
        "raw_bytes_per_s": len(data) / raw_s,
        "raw_occupancy": (coding.stats.rows - rows0) / slots if slots else 0.0,
    }


def long_text(limit: int = TEXT_BYTES) -> str:
    """The first `limit` bytes of corpus prose, cut at a paragraph: passages of all three
    sources in corpus order."""
    out = ""
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        out += json.loads(line)["text"] + "\n\n"
        if len(out.encode("utf-8")) >= limit:
            break
    return out.encode("utf-8")[:limit].decode("utf-8", "ignore").rsplit("\n\n", 1)[0]


class _Burner:
    """A CPU-bound process beside the measurement (a busy loop), while in the block."""

    def __enter__(self) -> _Burner:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _ratio(wide: dict[str, float], one: dict[str, float], key: str) -> float:
    return wide[key] / one[key] if one[key] else 0.0


async def _speed(batch_passages: list[dict[str, str]], text: str) -> dict[str, Any]:
    """The engine wide (the server's width, or WIDE when that is 1) against width 1."""
    default = _config().model.embedded.coding_width
    wide, one = await _server(width=default if default > 1 else WIDE), await _server(width=1)
    try:
        cfg: EmbeddedConfig = wide.config.model.embedded
        out: dict[str, Any] = {
            "width": cfg.coding_width,
            "threads": cfg.coding_threads,
            "engines": cfg.coding_engines,
        }
        batch: dict[str, Any] = {"passages": len(batch_passages)}
        for label in ("quiet", "cpu_bound_beside"):
            load0 = os.getloadavg()[0]
            if label == "quiet":
                w, o = await _batch(wide, batch_passages), await _batch(one, batch_passages)
            else:
                with _Burner():
                    w, o = await _batch(wide, batch_passages), await _batch(one, batch_passages)
            batch[label] = {
                "wide": w,
                "width_1": o,
                "items_per_s_ratio": _ratio(w, o, "items_per_s"),
                "loadavg_1min": (load0 + os.getloadavg()[0]) / 2,
            }
        out["batch"] = batch
        w, o = await _text(wide, text), await _text(one, text)
        out["text_32k"] = {
            "bytes_asked": len(text.encode("utf-8")),
            "wide": w,
            "width_1": o,
            "compress_ratio": _ratio(w, o, "compress_bytes_per_s"),
            "reconstruct_ratio": _ratio(w, o, "reconstruct_bytes_per_s"),
            "raw_ratio": _ratio(w, o, "raw_tokens_per_s"),
        }
        return out
    finally:
        await wide.stop(grace=0)
        await one.stop(grace=0)


# Row models compared side by side on the long text (model.embedded.coding_row_model).
ROW_MODEL_PAIR = ("identity", "mixer-v1")


async def _row_models(text: str, rounds: int = 1) -> dict[str, Any]:
    """The same text compressed (no verify) on one server per row model, in one run, in
    the order A B, then B A, ... for `rounds` rounds: B/s and coded bytes of each."""
    data = text.encode("utf-8")
    apps = {name: await _server(row_model=name) for name in ROW_MODEL_PAIR}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ROW_MODEL_PAIR}
    try:
        for app in apps.values():  # warm up: the tokenizer and row model tables
            async with grpc.aio.insecure_channel(app.address) as channel:
                await _stub(channel).Compress(
                    pb.CompressRequest(text=text[:200], mode=pb.MODE_LOSSLESS, verify=False)
                )
        for r in range(rounds):
            for name in ROW_MODEL_PAIR[:: 1 if r % 2 == 0 else -1]:
                load0 = os.getloadavg()[0]
                async with grpc.aio.insecure_channel(apps[name].address) as channel:
                    t0 = time.perf_counter()
                    resp = await _stub(channel).Compress(
                        pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, verify=False)
                    )
                    seconds = time.perf_counter() - t0
                env = pb.Envelope.FromString(resp.envelope)
                runs[name].append(
                    {
                        "seconds": seconds,
                        "loadavg_1min": (load0 + os.getloadavg()[0]) / 2,
                        "stream": len(env.lossless.stream),
                        "envelope": len(resp.envelope),
                        "row_model": env.lossless.fingerprint.row_model,
                    }
                )
    finally:
        for app in apps.values():
            await app.stop(grace=0)
    out: dict[str, Any] = {"bytes": len(data), "rounds": rounds}
    for name, rows in runs.items():
        seconds = sum(r["seconds"] for r in rows)
        out[name] = {
            "row_model": rows[0]["row_model"],
            "compress_bytes_per_s": len(data) * len(rows) / seconds,
            "stream_bits_per_byte": 8 * rows[0]["stream"] / len(data),
            "envelope": rows[0]["envelope"],
            "loadavg_1min": statistics.mean(r["loadavg_1min"] for r in rows),
            "runs": rows,
        }
    a, b = (out[name] for name in ROW_MODEL_PAIR)
    out["speed_fraction"] = b["compress_bytes_per_s"] / a["compress_bytes_per_s"]
    out["stream_gain"] = 1 - b["stream_bits_per_byte"] / a["stream_bits_per_byte"]
    return out


def measure(
    passages: list[dict[str, str]],
    *,
    verify: bool = False,
    speed: bool = True,
    batch_items: int = BATCH_ITEMS,
    text_bytes: int = TEXT_BYTES,
    row_model: str | None = None,
    row_model_rounds: int = 1,
    width_speed: bool = True,
    reconstruct: bool = True,
) -> dict[str, Any]:
    """LOSSLESS on `passages` ({"id", "text"} dicts), and (speed) the engine wide (its
    default width, or WIDE) against width 1 on `batch_items` passages (every 7th of the
    corpus) and one text of `text_bytes` bytes."""

    async def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        out: dict[str, Any] = {"loadavg_start": list(os.getloadavg())}
        out["corpus"] = await _corpus(passages, verify, row_model, reconstruct)
        if speed and width_speed:
            batch = load_passages(CORPUS, 7, batch_items)
            out["speed"] = await _speed(batch, long_text(text_bytes))
        if speed:
            out["row_models"] = await _row_models(long_text(text_bytes), row_model_rounds)
        out["loadavg_end"] = list(os.getloadavg())
        out["wall_seconds"] = time.perf_counter() - t0
        return out

    result = asyncio.run(run())
    corpus = result["corpus"]
    # Flat figures bench.report reads.
    result.update(
        {
            key: corpus[key]
            for key in ("passages", "exact", "total", "lossless_ratio", "brotli11_ratio")
        }
    )
    result["ratio_vs_brotli11"] = corpus["ratio_vs_brotli11"]
    return result


def table(result: dict[str, Any]) -> str:
    c = result["corpus"]
    lines = [
        f"LOSSLESS on {c['passages']} passages, {c['bytes']} B ({c['engine']}, width "
        f"{c['width']}, {c['threads']} thread(s), n_ctx {c['n_ctx']}, schedule {c['schedule']}, "
        f"row model {c['row_model']})",
        f"  exact               {c['exact']}/{c['total']}  (degraded {c['degraded']})"
        if c["reconstructed"]
        else f"  exact               not checked (--no-reconstruct; degraded {c['degraded']})",
        f"  ratio total/median  lossless {c['lossless_ratio']:.2f}x"
        f"/{c['lossless_ratio_median']:.2f}x  zstd-19 {c['zstd19_ratio']:.2f}x"
        f"  brotli-11 {c['brotli11_ratio']:.2f}x  ({c['ratio_vs_brotli11']:.2f}x brotli)",
        f"  coded stream only   {c['stream_ratio']:.2f}x"
        f"  (envelope overhead {c['mean_overhead_bytes']:.0f} B per text)",
        f"  bits per byte       {c['bits_per_byte']:.4f} (coded stream alone "
        f"{c['stream_bits_per_byte']:.4f})",
        f"  coded piecewise     {c['piecewise_bytes']} B ({c['piecewise_share']:.3%} of the bytes)",
        *(
            f"  {name:<19} {g['passages']:>3} texts  {g['lossless_ratio']:.2f}x, "
            f"{g['vs_brotli11']:.2f}x brotli (coded stream alone {g['stream_vs_brotli11']:.2f}x)"
            for name, g in c["by_size"].items()
        ),
        f"  all at once         compress {c['compress_bytes_per_s']:.0f} B/s (verify="
        f"{c['verify']}), reconstruct {c['reconstruct_bytes_per_s']:.0f} B/s; on the same "
        f"texts zstd -19 {c['zstd19_bytes_per_s']:,.0f} B/s, brotli -11 "
        f"{c['brotli11_bytes_per_s']:,.0f} B/s (one core)",
    ]
    s = result.get("speed")
    if s:
        w = s["width"]
        lines.append(
            f"Engine: width {w} against width 1 ({s['threads']} thread(s) per step, "
            f"{s['engines']} engine(s))"
        )
        for label in ("quiet", "cpu_bound_beside"):
            b = s["batch"][label]
            lines.append(
                f"  BatchCompress {label:<16} {b['wide']['items_per_s']:.2f} against "
                f"{b['width_1']['items_per_s']:.2f} items/s = {b['items_per_s_ratio']:.2f}x "
                f"(occupancy {b['wide']['occupancy']:.2f}, load {b['loadavg_1min']:.1f})"
            )
        t = s["text_32k"]
        tw, t1 = t["wide"], t["width_1"]
        lines += [
            f"  {t['bytes_asked'] // 1024} KB compress  "
            f"    {tw['compress_bytes_per_s']:.0f} against "
            f"{t1['compress_bytes_per_s']:.0f} B/s = {t['compress_ratio']:.2f}x "
            f"({tw['streams']} streams)",
            f"  {t['bytes_asked'] // 1024} KB reconstruct"
            f"   {tw['reconstruct_bytes_per_s']:.0f} against "
            f"{t1['reconstruct_bytes_per_s']:.0f} B/s = {t['reconstruct_ratio']:.2f}x",
            f"  raw engine          {tw['raw_tokens_per_s']:.1f} tok/s at width {w} "
            f"(occupancy {tw['raw_occupancy']:.2f}), {t1['raw_tokens_per_s']:.1f} at width 1",
            f"  verify              Compress with verify = {tw['verify_cost_passes']:.2f} "
            f"coding passes at width {w}, {t1['verify_cost_passes']:.2f} at width 1",
        ]
    m = result.get("row_models")
    if m:
        a, b = (m[name] for name in ROW_MODEL_PAIR)
        lines += [
            f"Row models on the same {m['bytes'] // 1024} KB text ({m['rounds']} round(s)): "
            f"{ROW_MODEL_PAIR[1]} ({b['row_model']}) against "
            f"{ROW_MODEL_PAIR[0]} ({a['row_model']})",
            f"  compress            {b['compress_bytes_per_s']:.0f} against "
            f"{a['compress_bytes_per_s']:.0f} B/s = {m['speed_fraction']:.2f} of the speed "
            f"(load {b['loadavg_1min']:.1f} / {a['loadavg_1min']:.1f})",
            f"  coded stream        {b['stream_bits_per_byte']:.4f} against "
            f"{a['stream_bits_per_byte']:.4f} bits per byte ({m['stream_gain']:.2%} fewer)",
        ]
    return "\n".join(lines)


def _commit() -> str:
    """The measured code's commit, with `+dirty` when the work tree differs from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "server", "bench"]
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load_passages(path: Path, every: int, limit: int | None) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    passages = [json.loads(line) for line in lines][::every]
    return passages[:limit] if limit else passages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lossless", description=__doc__)
    parser.add_argument("--every", type=int, default=4, help="take every Nth passage (1: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most N passages")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument(
        "--text", type=Path, help="code this one file as one text instead of corpus passages"
    )
    parser.add_argument("--verify", action="store_true", help="compress with verify on")
    parser.add_argument(
        "--no-speed",
        dest="speed",
        action="store_false",
        help="skip the width comparison: exactness and ratios only",
    )
    parser.add_argument(
        "--batch-items", type=int, default=BATCH_ITEMS, help="BatchCompress items per run"
    )
    parser.add_argument(
        "--text-bytes", type=int, default=TEXT_BYTES, help="size of the long text (32 KB)"
    )
    parser.add_argument(
        "--row-model",
        help="code the corpus (or --text) with this row model, by name or id "
        "(model.embedded.coding_row_model; default: the server's)",
    )
    parser.add_argument(
        "--row-model-rounds",
        type=int,
        default=1,
        help="rounds of the row-model speed comparison (A B, then B A, ...)",
    )
    parser.add_argument(
        "--no-width-speed",
        dest="width_speed",
        action="store_false",
        help="of the speed sections, run only the row-model comparison",
    )
    parser.add_argument(
        "--no-reconstruct",
        dest="reconstruct",
        action="store_false",
        help="compress only (ratios, one coding pass); exactness is not checked",
    )
    parser.add_argument("-o", "--output", type=Path, help="write JSON here (default stdout)")
    parser.add_argument(
        "--out", type=Path, help="write lossless.json and lossless.md into this directory"
    )
    args = parser.parse_args(argv)
    if args.text:
        # The bytes as they are: read_text's universal newlines would turn CRLF into LF.
        passages = [{"id": args.text.name, "text": args.text.read_bytes().decode("utf-8")}]
    else:
        passages = load_passages(args.corpus, args.every, args.limit)
    commit = _commit()  # at the start: the code measured, not what was committed meanwhile
    result = measure(
        passages,
        verify=args.verify,
        speed=args.speed,
        batch_items=args.batch_items,
        text_bytes=args.text_bytes,
        row_model=args.row_model,
        row_model_rounds=args.row_model_rounds,
        width_speed=args.width_speed,
        reconstruct=args.reconstruct,
    )
    result["command"] = "python -m bench.lossless " + " ".join(argv or sys.argv[1:])
    result["commit"] = commit
    result["subset"] = (
        f"the whole of {args.text.name}"
        if args.text
        else f"every {args.every}th passage" + (f", at most {args.limit}" if args.limit else "")
    )
    text = json.dumps(result, indent=2)
    # The figures first: a summary that fails to print must not lose an hour of measurement.
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lossless.json").write_text(text + "\n", encoding="utf-8")
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    summary = table(result)
    if args.out:
        (args.out / "lossless.md").write_text(
            f"# LOSSLESS benchmark\n\n`{result['command']}` ({result['subset']}), commit "
            f"{result['commit']}, load average "
            f"{result['loadavg_start']} at start, {result['loadavg_end']} at end, "
            f"{result['wall_seconds']:.0f} s.\n\n```\n{summary}\n```\n",
            encoding="utf-8",
        )
    if args.out or args.output:
        print(summary)
    else:
        print(summary, file=sys.stderr)
        print(text)
    return 0 if result["exact"] == result["total"] or not args.reconstruct else 1


if __name__ == "__main__":
    sys.exit(main())
