"""Corpus dictionaries across real processes: replicas sharing Redis, `llmc dict
export`/`import` to a server that shares nothing, and a server killed while training."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from llmcompress import Client

from ..conftest import CORPUS, RedisServer
from .processes import Llmc, Serve, llmc, start_replicas

CHANGELOG = CORPUS.parent / "debian-changelogs"
# Short LOSSLESS items (coded and verified by the packaged model; seconds each here).
LOSSLESS_ITEMS = 3


def rows(name: str, split: str) -> list[dict[str, str]]:
    path = CHANGELOG / name
    return [
        r
        for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())
        if r["split"] == split
    ]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files a killed writer left (the restarted server removes them)."""
    return sorted(folder.rglob(".tmp-*"))


def write_jsonl(path: Path, lines: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


@pytest.mark.model
async def test_train_on_one_compress_on_another_reconstruct_on_a_third(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = {"LLMC_CACHE__REDIS_URL": redis_server.url, "LLMC_CACHE__REDIS_TIMEOUT": "0.5"}
    first, second = start_replicas(tmp_path, 2, **shared)
    third = Serve(tmp_path / "alone.log")
    third.wait_serving()
    try:
        train = tmp_path / "train.jsonl"
        write_jsonl(
            train,
            [{"id": r["id"], "text": r["text"]} for r in rows("changelog-items.jsonl", "train")],
        )
        run = await llmc(
            "dict",
            "train",
            str(train),
            "--name",
            "changelog",
            "--no-progress",
            "--server",
            first.address,
        )
        assert run.code == 0, run.stderr
        assert "trained changelog" in run.stderr

        test = rows("changelog-items.jsonl", "test")
        items = [
            {"id": f"z{i}", "text": r["text"], "mode": "zstd"} for i, r in enumerate(test[:40])
        ]
        items += [
            {"id": f"l{i}", "text": r["text"], "mode": "lossless", "dictionary": "changelog"}
            for i, r in enumerate(test[40 : 40 + LOSSLESS_ITEMS])
        ]
        corpus, out = tmp_path / "items.jsonl", tmp_path / "out.jsonl"
        write_jsonl(corpus, items)
        # The second replica has never seen the dictionary but through Redis.
        run = await llmc(
            "batch",
            str(corpus),
            "-o",
            str(out),
            "--dictionary",
            "changelog",
            "--no-progress",
            "--server",
            second.address,
        )
        assert run.code == 0, run.stderr
        answers = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(answers) == len(items) and all("envelope" in a for a in answers)
        zstd_named = [a for a in answers if a["id"].startswith("z")]
        assert all(a["stats"].get("dictionary") for a in zstd_named)

        exported = tmp_path / "changelog.llmcd"
        run = await llmc(
            "dict", "export", "changelog", "-o", str(exported), "--server", second.address
        )
        assert run.code == 0, run.stderr

        # The third process shares nothing: without the dictionary it refuses, naming it.
        back = tmp_path / "texts.jsonl"
        run = await llmc("unbatch", str(out), "-o", str(back), "--server", third.address)
        assert run.code != 0
        assert "llmc dict import" in run.stderr
        run = await llmc("dict", "import", str(exported), "--server", third.address)
        assert run.code == 0, run.stderr
        run = await llmc("unbatch", str(out), "-o", str(back), "--server", third.address)
        assert run.code == 0, run.stderr
        texts = {
            str(r["id"]): r for r in map(json.loads, back.read_text(encoding="utf-8").splitlines())
        }
        assert {k: v["text"] for k, v in texts.items()} == {i["id"]: i["text"] for i in items}
        assert all(v["exact"] for v in texts.values())
        with Client(third.address, timeout=10) as client:
            listed = client.list_dictionaries()
        assert [d.names for d in listed] == [("changelog",)]
    finally:
        for server in (first, second, third):
            server.stop()


async def test_a_server_killed_while_training_lists_nothing_half_written(tmp_path: Path) -> None:
    # The zstd half only: choosing a primer would load the model, and the write is the same.
    server = Serve(tmp_path / "server.log", LLMC_DICTIONARIES__PRIMER_TOKENS="0")
    server.wait_serving()
    try:
        # Enough samples that training takes a moment after the upload.
        samples = [r["text"] for r in rows("changelog-entries.jsonl", "train")] * 6
        corpus = tmp_path / "big.jsonl"
        write_jsonl(corpus, [{"id": str(i), "text": f"{i}: {t}"} for i, t in enumerate(samples)])
        # Killed twice: while the samples stream in, and once training has begun.
        for wait_for in ("", "training dictionary big"):
            run = await Llmc.start(
                "dict",
                "train",
                str(corpus),
                "--name",
                "big",
                "--no-progress",
                "--server",
                server.address,
            )
            if wait_for:
                for _ in range(600):
                    if wait_for in server.tail(100_000):
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail(f"the server never logged {wait_for!r}: {server.tail()}")
            else:
                await asyncio.sleep(0.3)
            server.kill()
            finished = await run.finish(within=120)
            assert finished.code != 0
            server.restart()
            with Client(server.address, timeout=30) as client:
                listed = client.list_dictionaries()
                for info in listed:  # whatever finished before the kill is whole
                    data, _ = client.export_dictionary(info.id)
                    assert data
            assert len(listed) <= 1
            assert leftovers(Path(server.env["LLMC_DICTIONARIES__PATH"])) == []
    finally:
        server.stop()
