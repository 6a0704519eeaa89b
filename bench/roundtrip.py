"""The README's round trip, run as a user types it: `llmc serve` with defaults, then `llmc`.

Writes `transcript.md` (and `transcript.json`): each command as typed in a new shell
that activated `.venv`, with its output, and how long the server took to listen and to
load its model. The README quotes that file, so its transcript is an artifact of a
named commit, not a copy of a terminal.

    python -m bench.roundtrip --out docs/benchmarks/roundtrip    # `make roundtrip`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.lossless import CORPUS, ROOT, _commit

PASSAGE = "lcet10-0055"  # 1.2 KB of prose with names, numbers and dates
PORT = 50051  # `make run`'s, so the commands need no --server
# As the README gives them. Each runs in one new `bash -c`, after `. .venv/bin/activate`.
COMMANDS = (
    "llmc compress --mode zstd notes.txt -o notes.zstd.llmc",
    "llmc compress --mode lossless notes.txt -o notes.llmc",
    "llmc reconstruct notes.llmc -o back.txt && cmp notes.txt back.txt && echo identical",
    "llmc compress --mode semantic --target-ratio 8 notes.txt -o notes.sem.llmc",
    "llmc reconstruct notes.sem.llmc",
    "llmc stats",
)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _serve(log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """`llmc serve` with defaults (as `make run` starts it); seconds until it listens."""
    if _listening(PORT):
        raise SystemExit(f"port {PORT} is in use: stop what serves there (make run?) and retry")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "llmc"), "serve"],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    while not _listening(PORT):
        if proc.poll() is not None or time.perf_counter() - t0 > 120:
            proc.kill()
            raise SystemExit(f"llmc serve did not listen; its log:\n{log_path.read_text()}")
        time.sleep(0.05)
    return proc, time.perf_counter() - t0


def _run(command: str, cwd: Path) -> dict[str, object]:
    shell = f". {shlex.quote(str(ROOT / '.venv' / 'bin' / 'activate'))} && {command}"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    t0 = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", shell],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # interleaved as a terminal shows them
        text=True,
        check=False,
    )
    return {
        "command": command,
        "output": done.stdout,
        "exit": done.returncode,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def measure() -> dict[str, object]:
    passages = {}
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        passages[row["id"]] = row["text"]
    with tempfile.TemporaryDirectory(prefix="llmc-roundtrip-") as tmp:
        work = Path(tmp)
        (work / "notes.txt").write_text(passages[PASSAGE], encoding="utf-8")
        proc, listen_s = _serve(work / "serve.log")
        try:
            steps = [_run(command, work) for command in COMMANDS]
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops `make run`
            proc.wait(timeout=60)
        log = (work / "serve.log").read_text(errors="replace")
    return {
        "commit": _commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "passage": PASSAGE,
        "bytes": len(passages[PASSAGE].encode("utf-8")),
        "listen_seconds": round(listen_s, 2),
        "server_exit": proc.returncode,
        "server_log": log,
        "steps": steps,
    }


def transcript(result: dict[str, object]) -> str:
    steps = result["steps"]
    assert isinstance(steps, list)
    lines = [
        "# Round trip",
        "",
        "`python -m bench.roundtrip --out docs/benchmarks/roundtrip` (`make roundtrip`), "
        f"commit {result['commit']}, {result['date']}, {result['machine']}.",
        "",
        f"`llmc serve` with the default config on 127.0.0.1:{PORT} (as `make run` starts it) "
        f"listened after {result['listen_seconds']} s. Each command below ran in a new "
        "shell that had run `. .venv/bin/activate`, in a folder holding `notes.txt`: corpus "
        f"passage `{result['passage']}` ({result['bytes']:,} bytes). The server was then "
        f"stopped with Ctrl-C (SIGINT) and exited with status {result['server_exit']}.",
        "",
        "```console",
    ]
    for step in steps:
        lines.append(f"$ {step['command']}")
        lines.extend(str(step["output"]).rstrip("\n").splitlines())
    lines += ["```", "", "Exit status and wall time of each command:", ""]
    lines += ["| command | exit | seconds |", "|---|---|---|"]
    lines += [f"| `{s['command']}` | {s['exit']} | {s['seconds']} |" for s in steps]
    lines += ["", "The server's log:", "", "```", str(result["server_log"]).rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="write transcript.{md,json}")
    args = parser.parse_args(argv)
    result = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transcript.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "transcript.md").write_text(transcript(result))
    print(transcript(result))
    steps = result["steps"]
    assert isinstance(steps, list)
    failed = [s["command"] for s in steps if s["exit"] != 0]
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed or result["server_exit"] != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
