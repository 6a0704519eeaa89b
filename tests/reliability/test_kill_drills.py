"""Kill drills with real processes: `llmc batch` while a server is SIGKILLed.

Replicas: three `llmc serve` processes share one real redis-server; `llmc batch
--streams 3` runs across them through one multi-address target with round_robin,
and one replica is SIGKILLed mid-run. One server: the only server is SIGKILLed
mid-run, restarted, and the run finished with `--resume`. Either way every id
ends up in the output exactly once and every text comes back exact. Each drill
prints its figures (items, re-sent, duplicates, kill to first re-sent answer).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from llmcompress import Client

from ..conftest import RedisServer, load_corpus
from .processes import Llmc, LlmcRun, Serve, llmc, multi_target, start_replicas

COPIES = 10  # 1,640 ZSTD items: long enough to kill a server in the middle
# Short passages for the LOSSLESS share (each ~80 tokens, coded and verified by the model).
LOSSLESS_IDS = ("alice29-0136", "lcet10-0060", "asyoulik-0224")
RESENT_ANSWERED = re.compile(r"the first sent again was answered (?P<s>[0-9.]+)s after it broke")


def write_corpus(path: Path, lossless: tuple[str, ...] = ()) -> dict[str, str]:
    """`COPIES` distinct ZSTD items per passage, then each first copy again under a new
    id (the same text: a cache hit wherever it lands), and `lossless` passages first."""
    corpus = load_corpus()
    rows: list[dict[str, str]] = []
    for item in corpus:
        if item["id"] in lossless:
            rows.append({"id": f"{item['id']}#lossless", "text": item["text"], "mode": "lossless"})
    for n in range(COPIES):
        rows += [{"id": f"{i['id']}#{n}", "text": f"{i['text']}\n(copy {n})"} for i in corpus]
    rows += [{"id": f"{i['id']}#again", "text": f"{i['text']}\n(copy 0)"} for i in corpus]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {row["id"]: row["text"] for row in rows}


def out_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def wait_for_lines(path: Path, n: int, run: Llmc) -> None:
    """Until OUT holds `n` answers (the run writes and flushes one line per answer)."""
    while count_lines(path) < n:
        if run.proc.returncode is not None:
            pytest.fail(f"llmc batch ended before {n} answers:\n{run.stderr}")
        await asyncio.sleep(0.01)


async def check_exact(out: Path, texts: dict[str, str], server: str, tmp: Path) -> None:
    """`llmc unbatch` gives every text back, exact."""
    back = tmp / "texts.jsonl"
    run = await llmc("unbatch", str(out), "-o", str(back), "--server", server, "--jobs", "8")
    assert run.code == 0, run.stderr
    rows = out_lines(back)
    assert {str(r["id"]): r["text"] for r in rows} == texts
    assert all(r["exact"] for r in rows)


def validate_counts(replicas: list[Serve]) -> list[int]:
    """Compress requests each replica has handled (its own stage window)."""
    counts = []
    for replica in replicas:
        with Client(replica.address, timeout=10) as client:
            stats = client.stats(window_seconds=3600)
        counts.append(sum(s.count for s in stats.stages if s.stage == "validate"))
    return counts


def redis_hits(replica: Serve) -> int:
    with Client(replica.address, timeout=10) as client:
        return sum(t.hits for t in client.stats().cache if t.tier == "redis")


def resent_figures(run: LlmcRun, killed_at: float) -> tuple[int, int, float | None, float | None]:
    """(items sent again, duplicate answers, seconds from the kill to the first re-sent
    answer as the test saw it, and as the client measured it from the break)."""
    summary = run.first("sent again after a stream broke")
    resent = duplicates = 0
    if summary is not None:
        numbers = [int(n) for n in re.findall(r"(\d+) (?:items|answers)", summary[1])]
        resent, duplicates = numbers[0], numbers[1]
    answered = run.first("the first sent again was answered")
    if answered is None:
        return resent, duplicates, None, None
    found = RESENT_ANSWERED.search(answered[1])
    return resent, duplicates, answered[0] - killed_at, float(found["s"]) if found else None


@pytest.mark.model  # the LOSSLESS share loads the model in the replicas it lands on
@pytest.mark.timeout(1200)
async def test_replica_killed_mid_batch(redis_server: RedisServer, tmp_path: Path) -> None:
    src, out = tmp_path / "corpus.jsonl", tmp_path / "out.jsonl"
    texts = write_corpus(src, LOSSLESS_IDS)
    replicas = start_replicas(
        tmp_path, 3, LLMC_CACHE__REDIS_URL=redis_server.url, LLMC_CACHE__REDIS_TIMEOUT="0.5"
    )
    target = multi_target(replicas)
    victim, survivors = replicas[1], [replicas[0], replicas[2]]
    try:
        args = ("batch", str(src), "-o", str(out), "--mode", "zstd", "--server", target)
        started = time.monotonic()
        run = await Llmc.start(*args, "--streams", "3", "-v", "--no-progress")
        await wait_for_lines(out, len(texts) // 3, run)
        before_kill = validate_counts(replicas)
        victim.kill()
        killed_at = time.monotonic()
        done = await run.finish()
        elapsed = time.monotonic() - started
        assert done.code == 0, done.stderr
        # The three streams spread over the three replicas before the kill.
        assert all(count > 0 for count in before_kill), before_kill

        rows = out_lines(out)
        per_id = Counter(str(r["id"]) for r in rows)
        assert set(per_id) == set(texts) and set(per_id.values()) == {1}  # each id once
        assert all("envelope" in r for r in rows)
        modes = Counter(r["stats"]["mode"] for r in rows)  # type: ignore[index]
        assert modes == {"zstd": len(texts) - len(LOSSLESS_IDS), "lossless": len(LOSSLESS_IDS)}
        resent, duplicates, seen_after, client_after = resent_figures(done, killed_at)
        assert resent > 0, done.stderr  # the killed replica had items in flight
        assert client_after is not None, done.stderr

        # A text compressed on one replica is a Redis hit on the others: the repeated
        # texts at the end, and each survivor asked again for what the batch stored (the
        # passages of 4 KiB and more, 41 of 164: shorter ZSTD texts are not cached).
        batch_hits = sum(bool(r["stats"]["cache_hit"]) for r in rows)  # type: ignore[index]
        with Client(survivors[0].address, timeout=60) as client:
            for item in load_corpus()[:30]:
                client.compress(f"{item['text']}\n(copy 1)", "zstd")
        with Client(survivors[1].address, timeout=60) as client:
            for item in load_corpus()[30:60]:
                client.compress(f"{item['text']}\n(copy 1)", "zstd")
        hits = [redis_hits(s) for s in survivors]
        assert all(h > 0 for h in hits), hits
        assert batch_hits > 0

        await check_exact(out, texts, multi_target(survivors), tmp_path)
        again = await llmc(*args, "--resume", "--no-progress")
        assert again.code == 0 and f"{len(texts)} already done" in again.stderr, again.stderr
    finally:
        for replica in replicas:
            replica.stop()
    print(
        f"\nreplica drill: {len(texts)} items ({len(LOSSLESS_IDS)} LOSSLESS) sent over 3 "
        f"streams to 3 replicas, {len(per_id)} answered, each once; replica 1 SIGKILLed "
        f"after {sum(before_kill)} compressions (per replica {before_kill}); {resent} items "
        f"re-sent, {duplicates} duplicate answers dropped; first re-sent answer "
        f"{seen_after:.2f}s after the kill ({client_after:.2f}s after the client saw the "
        f"break); {batch_hits} batch answers were cache hits, Redis hits on the survivors "
        f"{hits}; run {elapsed:.1f}s"
    )


@pytest.mark.timeout(900)
async def test_only_server_killed_then_resume(tmp_path: Path) -> None:
    src, out = tmp_path / "corpus.jsonl", tmp_path / "out.jsonl"
    texts = write_corpus(src)
    server = Serve(tmp_path / "server.log")
    server.wait_serving()
    try:
        args = ("batch", str(src), "-o", str(out), "--mode", "zstd", "--server", server.address)
        run = await Llmc.start(*args, "--no-progress")
        await wait_for_lines(out, len(texts) // 3, run)
        server.kill()
        killed_at = time.monotonic()
        broken = await run.finish()
        # Retries ran out with no server: the run stops (exit 3: no server), saying how
        # to go on.
        assert broken.code == 3, broken.stderr
        assert "--resume" in broken.stderr and "cannot reach a server" in broken.stderr
        kept = count_lines(out)
        assert kept < len(texts)

        restarting = time.monotonic()
        server.restart()
        restart_took = time.monotonic() - restarting
        resumed = await Llmc.start(*args, "--resume", "--no-progress")
        await wait_for_lines(out, kept + 1, resumed)
        first_answer = time.monotonic() - killed_at
        done = await resumed.finish()
        assert done.code == 0, done.stderr
        assert f"{kept} already done" in done.stderr, done.stderr
        rows = out_lines(out)
        per_id = Counter(str(r["id"]) for r in rows)
        assert set(per_id) == set(texts) and set(per_id.values()) == {1}  # each id once
        assert all("envelope" in r for r in rows)
        await check_exact(out, texts, server.address, tmp_path)
    finally:
        server.stop()
    print(
        f"\none-server drill: {len(texts)} items; SIGKILL after {kept} answers, the run "
        f"stopped (exit 3); restarted and --resume sent the other {len(texts) - kept}, all "
        f"answered, each id once; first answer after the kill {first_answer:.2f}s later, "
        f"{restart_took:.2f}s of it the restart"
    )
