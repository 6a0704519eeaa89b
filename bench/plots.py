"""PNG plots of a run: ratio vs text size per mode (with zstd/brotli), latency by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np

from .modes import bucket_labels, bucket_of

_COLORS = {"zstd": "tab:blue", "lossless": "tab:green", "semantic": "tab:red"}


def ratio_vs_size(results: dict[str, Any], path: Path) -> None:
    edges = results["options"]["sizes"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for mode, entry in results["modes"].items():
        items = [it for data in entry.get("tiers", {}).values() for it in data["items"]]
        if items:
            ax.scatter(
                [it["original_bytes"] for it in items],
                [it["ratio"] for it in items],
                s=14,
                alpha=0.6,
                color=_COLORS.get(mode),
                label=f"{mode.upper()} ({len(items)} texts)",
            )
    # Baselines: median size and aggregate ratio of each size bucket, whole corpus.
    table = results["baselines"]["compression"].values()
    for key, label, style in (
        ("zstd19_bytes", "zstd -19", "--"),
        ("brotli11_bytes", "brotli -11", ":"),
    ):
        xs, ys = [], []
        for bucket in bucket_labels(edges):
            rows = [r for r in table if bucket_of(r["original_bytes"], edges) == bucket]
            if rows:
                xs.append(float(np.median([r["original_bytes"] for r in rows])))
                ys.append(sum(r["original_bytes"] for r in rows) / sum(r[key] for r in rows))
        ax.plot(xs, ys, style, color="black", marker="o", label=f"{label} (per size bucket)")
    ax.set_xscale("log")
    ax.set_xlabel("original text size (UTF-8 bytes)")
    ax.set_ylabel("ratio (original bytes / envelope bytes)")
    ax.set_title("Compression ratio vs text size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stage_latency(results: dict[str, Any], path: Path) -> None:
    """p50 and p95 of each stage, compress and reconstruct, per mode (server-side timings).

    One bar per stage on a log axis: stages span microseconds to seconds, and stacked
    bars on a log axis would misstate their shares.
    """
    rows: list[tuple[str, float, float]] = []
    for mode, entry in results["modes"].items():
        for tier, data in entry.get("tiers", {}).items():
            for group in data["groups"].values():
                for side, stages in group["stages"].items():
                    head = f"{mode.upper()} {side}" + (f" [{tier}]" if tier != "default" else "")
                    for stage, v in stages.items():
                        rows.append((f"{head}: {stage}", v["p50"] * 1e3, v["p95"] * 1e3))
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.28 * max(len(rows), 1)))
    if rows:
        names = [r[0] for r in rows][::-1]
        p50 = np.array([r[1] for r in rows][::-1])
        p95 = np.array([r[2] for r in rows][::-1])
        floor = 1e-3  # 1 µs: keeps zero-length stages visible on the log axis
        ax.barh(names, np.maximum(p95, floor), color="tab:orange", alpha=0.5, label="p95")
        ax.barh(names, np.maximum(p50, floor), color="tab:blue", label="p50")
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("server-side ms per call (log scale)")
    ax.set_title("Latency by stage")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    paths = [out / "ratio_vs_size.png", out / "stage_latency.png"]
    ratio_vs_size(results, paths[0])
    stage_latency(results, paths[1])
    return paths
