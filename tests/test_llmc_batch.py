"""`llmc batch` / `llmc unbatch` as a user runs them: a real process against the real server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from llmcompress_server.api.server import App

from .conftest import CORPUS, StartServer, load_corpus


async def llmc(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmcompress.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def compress_calls(app: App) -> int:
    """Compress requests this server has handled, cache hits included: every one
    passes the `validate` stage (counted by the server's own stage window)."""
    return sum(s.count for s in app.stages.summary() if s.stage == "validate")


async def settled_calls(app: App) -> int:
    count = compress_calls(app)
    for _ in range(50):
        await asyncio.sleep(0.3)
        if count == (count := compress_calls(app)):
            break
    return count


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_corpus(path: Path, copies: int) -> dict[str, str]:
    texts = {
        f"{item['id']}#{n}": f"{item['text']}\n(copy {n})"
        for n in range(copies)
        for item in load_corpus()
    }
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    return texts


async def test_batch_then_unbatch_gives_back_every_text(server: App, tmp_path: Path) -> None:
    out, texts = tmp_path / "out.jsonl", tmp_path / "texts.jsonl"
    code, err = await llmc(
        "batch", str(CORPUS), "-o", str(out), "--mode", "zstd", "--server", server.address
    )
    assert code == 0, err
    assert "164 items" in err and "0 failed" in err
    results = lines(out)
    assert len(results) == 164 and all("envelope" in r for r in results)
    assert all(r["stats"]["mode"] == "zstd" for r in results)  # type: ignore[index]

    code, err = await llmc("unbatch", str(out), "-o", str(texts), "--server", server.address)
    assert code == 0, err
    back = {str(r["id"]): r["text"] for r in lines(texts)}
    assert back == {item["id"]: item["text"] for item in load_corpus()}
    assert all(r["exact"] for r in lines(texts))


async def test_resume_after_a_stopped_run_redoes_nothing(server: App, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    common = ("--mode", "zstd", "--server", server.address)
    code, err = await llmc("batch", str(CORPUS), "-o", str(out), "--limit", "50", *common)
    assert code == 0, err
    assert len(lines(out)) == 50
    # A run killed mid-write leaves a torn last line.
    with out.open("a") as f:
        f.write('{"id": "torn", "envelo')

    code, err = await llmc("batch", str(CORPUS), "-o", str(out), *common)
    assert code == 2 and "--resume" in err  # never appends to OUT by accident

    before = compress_calls(server)
    code, err = await llmc("batch", str(CORPUS), "-o", str(out), "--resume", *common)
    assert code == 0, err
    assert "torn last line" in err
    assert compress_calls(server) - before == 164 - 50  # finished ids were not sent again
    ids = [r["id"] for r in lines(out)]
    assert sorted(ids) == sorted(item["id"] for item in load_corpus())  # each id once


async def test_resume_after_kill(server: App, tmp_path: Path) -> None:
    src, out = tmp_path / "corpus.jsonl", tmp_path / "out.jsonl"
    texts = write_corpus(src, copies=10)
    args = ("batch", str(src), "-o", str(out), "--mode", "zstd", "--server", server.address)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmcompress.cli", *args, stderr=asyncio.subprocess.DEVNULL
    )
    for _ in range(3000):
        if out.exists() and out.read_bytes().count(b"\n") >= 200:
            break
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    kept = out.read_bytes().count(b"\n")
    assert 200 <= kept < len(texts), "the batch finished before it could be interrupted"
    before = await settled_calls(server)  # items in flight at the kill may still finish
    code, err = await llmc(*args, "--resume")
    assert code == 0, err
    assert compress_calls(server) - before == len(texts) - kept
    assert sorted(str(r["id"]) for r in lines(out)) == sorted(texts)


async def test_failed_items_exit_nonzero_and_resume_retries_them(
    start_server: StartServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    strict = await start_server(compression={"max_text_bytes": 2000})
    too_big = {i["id"] for i in load_corpus() if len(i["text"].encode()) > 2000}
    assert too_big
    code, err = await llmc(
        "batch", str(CORPUS), "-o", str(out), "--mode", "zstd", "--server", strict.address
    )
    assert code == 1
    assert f"{len(too_big)} failed" in err and "--resume" in err
    errors = {str(r["id"]): r["error"] for r in lines(out) if "error" in r}
    assert set(errors) == too_big
    assert all(e["code"] == "INVALID_ARGUMENT" for e in errors.values())  # type: ignore[index]

    code, err = await llmc("unbatch", str(out), "--server", strict.address)
    assert code == 1 and f"{len(too_big)} had no envelope" in err

    roomy = await start_server()
    before = compress_calls(roomy)
    code, err = await llmc(
        "batch",
        str(CORPUS),
        "-o",
        str(out),
        "--resume",
        "--mode",
        "zstd",
        "--server",
        roomy.address,
    )
    assert code == 0, err
    assert compress_calls(roomy) - before == len(too_big)
    assert sorted(str(r["id"]) for r in lines(out) if "envelope" in r) == sorted(
        i["id"] for i in load_corpus()
    )


async def test_target_ratio_flag_and_per_line(start_server: StartServer, tmp_path: Path) -> None:
    # A SEMANTIC text whose target leaves no room for one whole sentence is stored exactly,
    # and the reason names the target the server used: so the flag and each line's own
    # value reach it. (Stored as ZSTD here, so no model is loaded.)
    server = await start_server(compression={"short_text_store": "zstd"})
    short = (
        "The committee met on Tuesday to review the proposal for the new library wing. "
        "After a long discussion it asked the architects for a cheaper design by March."
    )
    src, out = tmp_path / "corpus.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        json.dumps({"id": "flag", "text": short, "mode": "semantic"})
        + "\n"
        + json.dumps({"id": "own", "text": short, "mode": "semantic", "target_ratio": 9.5})
        + "\n"
    )
    code, err = await llmc(
        "batch", str(src), "-o", str(out), "--target-ratio", "7.5", "--server", server.address
    )
    assert code == 0, err
    reasons = {str(r["id"]): str(r["stats"]["reason"]) for r in lines(out)}  # type: ignore[index]
    assert "at target ratio 7.5" in reasons["flag"], reasons
    assert "at target ratio 9.5" in reasons["own"], reasons

    text = tmp_path / "short.txt"
    text.write_text(short)
    code, err = await llmc(
        "compress", str(text), "-o", str(tmp_path / "short.llmc"), "--mode", "semantic",
        "--target-ratio", "6", "--server", server.address,
    )  # fmt: skip
    assert code == 0, err
    assert "at target ratio 6" in err

    for bad in ("1", "x"):
        code, err = await llmc("compress", str(text), "--target-ratio", bad)
        assert code == 2 and "--target-ratio" in err
    src.write_text(json.dumps({"id": "bad", "text": short, "target_ratio": 0.5}) + "\n")
    code, err = await llmc(
        "batch", str(src), "-o", str(tmp_path / "bad.jsonl"), "--server", server.address
    )
    assert code == 2 and "target_ratio must be a number above 1" in err
