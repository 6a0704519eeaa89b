"""The benchmark harness: its quick path on a handful of passages, and whether the
figures it writes agree with each other and with direct computations."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import brotli
import pytest
import zstandard

from bench.modes import bucket_of
from bench.report import MET, NOT_MEASURED, NOT_MET, write_outputs
from bench.run import add_arguments, optional_section, problems, run
from bench.run import main as bench_main
from bench.streaming import CACHE_SIZES, cache_costs, cache_table, records, redis_replica
from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.codecs.zstd import ZstdCodec
from llmcompress_server.core.config import load_config
from llmcompress_server.core.envelope import seal

from .conftest import CORPUS, require_tool

EDGES = [1024, 2048, 4096]


def _handful(corpus: list[dict[str, str]]) -> list[dict[str, str]]:
    """Two passages from each size bucket, so every bucket row is exercised."""
    chosen: list[dict[str, str]] = []
    for label in ("<1 KB", "1 KB-2 KB", "2 KB-4 KB", ">=4 KB"):
        rows = [r for r in corpus if bucket_of(len(r["text"].encode("utf-8")), EDGES) == label]
        chosen += rows[:2]
    return chosen


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def passages(corpus: list[dict[str, str]]) -> list[dict[str, str]]:
    return _handful(corpus)


@pytest.fixture(scope="module")
async def bench_run(
    passages: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    tmp_path = tmp_path_factory.mktemp("bench")
    corpus_file = tmp_path / "handful.jsonl"
    corpus_file.write_text("".join(json.dumps(r) + "\n" for r in passages), encoding="utf-8")
    out = tmp_path / "out"
    # ZSTD only and no extra sections: no model loads, so this stays a fast test.
    opts = _options(
        "--profile", "quick", "--corpus", str(corpus_file), "--modes", "zstd",
        "--sections", "", "--out", str(out),
    )  # fmt: skip
    results = await run(opts)
    write_outputs(results, out)
    return json.loads((out / "results.json").read_text(encoding="utf-8")), out


async def test_quick_run_writes_consistent_figures(
    bench_run: tuple[dict[str, Any], Path], passages: list[dict[str, str]]
) -> None:
    results, out = bench_run
    texts = {r["id"]: r["text"].encode("utf-8") for r in passages}
    assert results["problems"] == []
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"]
    assert "llama-cpp-python" in machine["versions"]

    zstd = results["modes"]["zstd"]
    items = zstd["tiers"]["default"]["items"]
    assert sorted(it["id"] for it in items) == sorted(texts)
    comp = load_config(environ={}).compression  # the quick run's server: default config
    codec = ZstdCodec(comp.zstd_level, comp.zstd_small_level, comp.zstd_small_bytes)
    for it in items:
        data = texts[it["id"]]
        assert it["original_bytes"] == len(data)
        # The envelope the server returned, rebuilt here from the same zstd frame.
        body = pb.ZstdBody(frame=codec.compress_bytes(data))
        envelope = seal(data, pb.Envelope(mode=pb.MODE_ZSTD, zstd=body))
        assert it["envelope_bytes"] == len(envelope)
        assert it["ratio"] == pytest.approx(len(data) / len(envelope), rel=1e-12)
        assert it["server_ratio"] == pytest.approx(it["ratio"], rel=1e-9)
        assert it["exact"] and it["server_exact"] and it["stored_mode"] == "zstd"
        assert it["bucket"] == bucket_of(len(data), EDGES)
        assert [s for s, _ in it["compress_stages"]] == [
            "admission.wait",
            "validate",
            "zstd.encode",
            "pack",
        ]

    (group,) = zstd["tiers"]["default"]["groups"].values()
    summary = group["all"]
    assert summary["n"] == len(texts) == summary["exact"]
    assert sum(b["n"] for b in group["buckets"].values()) == summary["n"]
    assert len(group["buckets"]) == 4
    ratios = [it["ratio"] for it in items]
    assert summary["ratio"]["p50"] == pytest.approx(statistics.median(ratios))
    r = summary["ratio"]
    assert r["min"] <= r["p10"] <= r["p50"] <= r["p90"] <= r["max"]
    assert summary["aggregate_ratio"] == pytest.approx(
        sum(map(len, texts.values())) / sum(it["envelope_bytes"] for it in items)
    )
    lat = summary["compress_seconds"]
    assert 0 < lat["p50"] <= lat["p95"]
    assert summary["items_per_min"] == pytest.approx(
        60 * len(items) / sum(it["compress_seconds"][0] for it in items)
    )
    assert zstd["batch"]["items"] == len(texts) and zstd["batch"]["errors"] == 0

    baselines = results["baselines"]["compression"]
    for item_id, data in texts.items():
        assert baselines[item_id]["zstd19_bytes"] == len(
            zstandard.ZstdCompressor(level=19).compress(data)
        )
        assert baselines[item_id]["brotli11_bytes"] == len(brotli.compress(data, quality=11))
    echo = results["baselines"]["echo"]
    assert echo["unary_calls_per_s"] > 0 and echo["stream_messages_per_s"] > 0

    statuses = {t["target"]: t for t in results["targets"]}
    ratio_target = statuses["ratio, ZSTD"]
    assert ratio_target["status"] == (MET if r["p50"] > 10 else NOT_MET)
    assert ratio_target["measured"] == f"{r['p50']:.2f}x"
    assert statuses["quality, ZSTD"]["status"] == MET
    assert statuses["BatchCompress vs Little's-law ideal"]["status"] == NOT_MEASURED

    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Targets", "### ZSTD", "## Baselines", "## Subsets", machine["cpu"]):
        assert heading in report
    for name in results["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_problems_catch_a_ratio_that_disagrees(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = bench_run
    broken = copy.deepcopy(results)
    item = broken["modes"]["zstd"]["tiers"]["default"]["items"][0]
    item["ratio"] *= 1.01
    item["exact"] = False
    found = problems(broken)
    assert any("in Stats" in p for p in found)
    assert any("not exact" in p for p in found)


async def test_missing_section_says_so() -> None:
    section = await optional_section("bench.no_such_section", [])
    assert section == {
        "available": False,
        "reason": "section not available on this build (bench/no_such_section.py is missing)",
    }


def test_bench_checks_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--iterations", "0"]) == 2
    assert "--iterations must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--help"])
    assert exit_info.value.code == 0
    assert "--profile" in capsys.readouterr().out


async def test_bench_against_a_server_with_token_auth(
    start_server: Any,
    passages: list[dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("bench-token-0123\n")
    app = await start_server(security={"tokens_file": str(tokens)})
    corpus_file = tmp_path / "handful.jsonl"
    corpus_file.write_text("".join(json.dumps(r) + "\n" for r in passages[:2]), encoding="utf-8")
    opts = _options(
        "--profile", "quick", "--corpus", str(corpus_file), "--modes", "zstd",
        "--sections", "", "--out", str(tmp_path / "out"),
        "--server", app.address, "--token", "bench-token-0123",
    )  # fmt: skip
    results = await run(opts)
    items = results["modes"]["zstd"]["tiers"]["default"]["items"]
    assert len(items) == 2 and all(it["exact"] for it in items)
    assert bench_main(["--token", "t", "--corpus", str(corpus_file)]) == 2
    assert "give --server too" in capsys.readouterr().err


def test_the_dictionaries_bench_measures_each_row_on_held_out_documents(tmp_path: Path) -> None:
    """bench.dictionaries on a small corpus of one kind, ZSTD rows only (no model): the
    dictionary is trained on one split and every row codes the other, all answered."""
    from bench.dictionaries import ZSTD_ROUNDS, measure, split_rows

    source = CORPUS.parent / "debian-changelogs" / "changelog-items.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(lines[:400] + lines[-200:]) + "\n", encoding="utf-8")
    train, test = split_rows(small, 0, 0)
    assert train and test and not set(train) & set(test)
    result = measure([("small", small, 0, 0)], lossless=0, sizes=(4096, 16384))
    (corpus,) = result["corpora"]
    rows = corpus["rows"]
    assert set(rows) == {"ZSTD", "ZSTD with the dictionary", "brotli -11 (raw, in process)"}
    assert corpus["test_texts"] == len(test) and corpus["train_texts"] == len(train)
    assert all(r["items"] == len(test) for r in rows.values())
    assert rows["ZSTD"]["error_count"] == rows["ZSTD with the dictionary"]["error_count"] == 0
    assert rows["ZSTD with the dictionary"]["named_dictionary"] == len(test)
    assert rows["ZSTD with the dictionary"]["ratio"] > rows["ZSTD"]["ratio"]
    # The rows with and without the dictionary took turns over chunks of the test texts,
    # ZSTD_ROUNDS times (sizes from the first round).
    assert rows["ZSTD"]["chunks"] == rows["ZSTD with the dictionary"]["chunks"] > 1
    assert rows["ZSTD"]["rounds"] == rows["ZSTD with the dictionary"]["rounds"] == ZSTD_ROUNDS
    assert rows["ZSTD"]["coded"] == ZSTD_ROUNDS * len(test)
    # Every pass was new to the server's cache: speeds are of coding, not of cache hits.
    assert rows["ZSTD"]["cache_hits"] == rows["ZSTD with the dictionary"]["cache_hits"] == 0
    # The in-process size sweep: one row per size, each coding every test text smaller
    # than plain ZSTD, zstd's own frames too.
    sweep = corpus["sizes"]
    assert [s["size_bound"] for s in sweep] == [4096, 16384]
    assert all(s["gain"] > 1 and s["raw_gain"] > 1 for s in sweep)
    assert all(s["zstd_bytes"] <= s["size_bound"] for s in sweep)


def test_the_streaming_reports_cache_table_measures_what_it_names() -> None:
    # cache_costs raises if a cached pass misses or an uncached one hits; a real
    # redis-server, when installed, gives the Redis column.
    rows = cache_costs(limit=20, rounds=1)
    assert [r["bytes"] for r in rows] == list(CACHE_SIZES)
    assert [r["level"] for r in rows] == [19, 19, 6, 6, 6, 6, 6]  # the codec's own levels
    assert all(r["coded_us"] > 0 and r["miss_us"] > 0 and r["hit_us"] > 0 for r in rows)
    redis = [r["redis_miss_store_us"] for r in rows]
    if shutil.which("redis-server"):
        assert all(x is not None and x > 0 for x in redis)
    else:
        assert redis == [None] * len(rows)
    assert len(cache_table(rows).splitlines()) == 2 + len(CACHE_SIZES)


def test_the_streaming_reports_redis_replica_rows_hold_what_they_name() -> None:
    # Real `llmc serve` processes and a real redis-server: redis_replica raises unless the
    # default config stored no key and `zstd_min_bytes: 0` one per text.
    require_tool("redis-server")
    texts = records("changelog-items.jsonl", 100, 200, 40)
    result = redis_replica(texts, 1)
    assert result["available"] and result["texts"] == 40
    assert all(v["items_per_s"] > 0 for v in result["variants"].values())
