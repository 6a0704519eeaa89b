"""Real processes for the drills: `llmc serve` replicas and `llmc` client runs whose
stderr lines are stamped as they arrive (so a drill can time what follows a kill)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..test_serve_process import free_port

# How long a starting `llmc serve` may take to answer health checks: a hang detector
# for a machine shared with other work, not a speed bound.
START_WITHIN = 180.0


class Serve:
    """`llmc serve` on its own port as a child process; its log goes to `log`.

    `env` adds LLMC_ overrides to the test defaults (no metrics port, no preload)."""

    def __init__(self, log: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.log = log
        # Its own dictionaries folder (kept across `restart`), never the user's.
        env.setdefault("LLMC_DICTIONARIES__PATH", str(log.with_suffix(".dictionaries")))
        self.env = env
        self.proc = self._spawn()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        environ = dict(
            os.environ,
            LLMC_MONITORING__ENABLE_PROMETHEUS="false",
            LLMC_MODEL__EMBEDDED__PRELOAD="false",
            LLMC_COMPRESSION__ZSTD_LEVEL="19",  # conftest.TEST_ZSTD_LEVEL
            **self.env,
        )
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "llmcompress.cli", "serve", "--port", str(self.port)],
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self) -> None:
        """Block until the health service says SERVING."""
        deadline = time.monotonic() + START_WITHIN
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"llmc serve exited ({self.proc.returncode}): {self.tail()}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"llmc serve not SERVING within {START_WITHIN:.0f}s: {self.tail()}")
                time.sleep(0.1)

    def restart(self) -> None:
        """A fresh process on the same port (after `kill`)."""
        self.proc = self._spawn()
        self.wait_serving()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to the clients."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def start_replicas(tmp: Path, count: int, **env: str) -> list[Serve]:
    """`count` replicas started together (they load in parallel), each SERVING."""
    replicas = [Serve(tmp / f"replica-{i}.log", **env) for i in range(count)]
    for replica in replicas:
        replica.wait_serving()
    return replicas


def multi_target(replicas: list[Serve]) -> str:
    """One gRPC target naming every replica: what a headless Service resolves to."""
    return "ipv4:" + ",".join(r.address for r in replicas)


@dataclass
class LlmcRun:
    """A finished `llmc` run: exit code and stderr lines with their arrival times."""

    code: int
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, needle: str) -> tuple[float, str] | None:
        return next(((t, line) for t, line in self.lines if needle in line), None)


class Llmc:
    """`llmc ...` as a child process, started now; `finish()` waits for it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._reader = asyncio.create_task(self._read())

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    @classmethod
    async def start(cls, *args: str) -> Llmc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmcompress.cli",
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    async def finish(self, within: float = 900.0) -> LlmcRun:
        """The run's outcome; `within` only stops a hung run from hanging the suite."""
        await asyncio.wait_for(self.proc.wait(), within)
        await self._reader
        assert self.proc.returncode is not None
        return LlmcRun(self.proc.returncode, self.lines)


async def llmc(*args: str) -> LlmcRun:
    return await (await Llmc.start(*args)).finish()
