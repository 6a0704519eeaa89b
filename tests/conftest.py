"""Shared fixtures: the real aio server on 127.0.0.1:0, real channels, the corpus."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import pytest
import redis.asyncio as aioredis

from bench.local_redis import redis_command
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App, create_server
from llmcompress_server.backends.router import BackendRouter
from llmcompress_server.core.config import Config, load_config
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.events import EventSink

if TYPE_CHECKING:
    from tests.sim_ollama import SimOllama

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus" / "passages.jsonl"
IN_CI = os.environ.get("CI", "").lower() == "true"


# Debian packages of the system tools the tests use, where the name differs.
APT_PACKAGES = {"promtool": "prometheus", "kubectl": "kubernetes-client", "node": "nodejs npm"}
# The skip reason `missing_part` gives; the terminal summary lists these parts.
MISSING_PART = re.compile(r"missing system part: (?P<part>.+?); install it with `(?P<how>[^`]+)`")


def missing_part(part: str, install: str) -> NoReturn:
    """Skip the test on a user's machine (the summary names the part and its install
    command); under CI=true a missing part is a failure."""
    message = f"missing system part: {part}; install it with `{install}` (.ci/run does)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of a system tool; a named skip on a user's machine, a failure under CI."""
    path = shutil.which(name)
    if path is None:
        missing_part(name, f"apt-get install {APT_PACKAGES.get(name, name)}")
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After "N skipped": which real parts were missing, and the command that installs each."""
    parts: dict[tuple[str, str], int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if found := MISSING_PART.search(reason):
            key = (found["part"], found["how"])
            parts[key] = parts.get(key, 0) + 1
    if not parts:
        return
    skipped = sum(parts.values())
    terminalreporter.section(f"{skipped} tests skipped: real system parts missing", sep="!")
    width = max(len(part) for part, _ in parts)
    for (part, how), count in sorted(parts.items()):
        terminalreporter.line(f"  {part:<{width}}  {count:>3} tests  install: {how}")
    terminalreporter.line(
        "  These tests did not run. `.ci/run` installs every part; under CI=true a missing "
        "part fails its tests."
    )


def load_corpus() -> list[dict[str, str]]:
    if not CORPUS.is_file():
        pytest.fail(f"corpus missing at {CORPUS} (it is part of the repository)")
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def corpus() -> list[dict[str, str]]:
    return load_corpus()


def make_config(**sections: dict[str, Any]) -> Config:
    """Config for tests: loopback, any free port, no metrics port, no model preload, and
    ZSTD at level 19 for every size (TEST_ZSTD_LEVEL)."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 2},
        # Never the user's own dictionaries: a folder of this config's. No LOSSLESS primer
        # unless a test asks (choosing one loads the model).
        "dictionaries": {"path": tempfile.mkdtemp(prefix="llmc-dicts-"), "primer_tokens": 0},
        "monitoring": {"enable_prometheus": False},
        "model": {"embedded": {"preload": False}},
        "compression": {"zstd_level": TEST_ZSTD_LEVEL},
    }
    for name, values in sections.items():
        merged = dict(base.get(name, {}))
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        base[name] = merged
    return load_config(environ={}, overrides=base)


StartServer = Callable[..., Awaitable[App]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start real servers with config overrides (and event `sinks` of the test's own);
    all are stopped at teardown."""
    apps: list[App] = []

    async def start(
        config: Config | None = None, *, sinks: Sequence[EventSink] = (), **sections: dict[str, Any]
    ) -> App:
        app = await create_server(config or make_config(**sections), sinks=sinks)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=0)


@pytest.fixture
async def server(start_server: StartServer) -> App:
    return await start_server()


@pytest.fixture
async def stub(server: App) -> AsyncIterator[pb_grpc.CompressionServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.CompressionServiceStub(channel)


# Tests that watch a call in flight need zstd to take real time on `slow_text`: level 19
# does (~1 s per MB here); the default level for texts above 512 bytes, 6, is ~20x faster.
TEST_ZSTD_LEVEL = 19


def slow_text(n_bytes: int, seed: int = 1) -> str:
    """Shuffled corpus words: text zstd -19 needs real time for (~1 s per MB here),
    so a call made with it stays in flight long enough to observe."""
    import random

    rng = random.Random(seed)
    words = " ".join(item["text"] for item in load_corpus()).split()
    out: list[str] = []
    size = 0
    while size < n_bytes:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n_bytes]


SimFactory = Callable[..., Awaitable["SimOllama"]]


@pytest.fixture
async def sim_ollama() -> AsyncIterator[SimFactory]:
    """Start simulated Ollama servers: `sim = await sim_ollama(slots=8, latency=0.05)`.

    Keyword arguments are `tests.sim_ollama.SimOptions` fields; all are closed at teardown.
    """
    from tests.sim_ollama import SimOllama, SimOptions

    sims: list[SimOllama] = []

    async def start(**options: Any) -> SimOllama:
        sim = await SimOllama(SimOptions(**options)).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.close()


# --- a server whose SEMANTIC backend is an Ollama endpoint ----------------------------


def semantic_config(endpoint: str, **llm: Any) -> Config:
    return make_config(
        model={"backend": "ollama", "ollama": {"endpoints": [endpoint]}},
        performance={"max_concurrent": 8, "max_queue": 256},
        # Room for a summary at any text these tests send (at the default 10 a short text
        # is stored exactly, and the simulator is never asked), and the quality gate on
        # request only (the simulator's answers are not prose worth scoring; the gate has
        # its own tests).
        compression={"default_mode": "semantic", "target_ratio": 2.0, "quality_gate": "on_request"},
        llm={"rate_limit": 0, "fallback_embedded": False, "retry_base_delay": 0.01,
             "retry_max_delay": 0.2, "health_interval": 0, **llm},
    )  # fmt: skip


async def semantic_server(start_server: StartServer, endpoint: str, **llm: Any) -> App:
    """A server whose SEMANTIC codec talks to the Ollama at `endpoint` (e.g. the simulated one)."""
    app = await start_server(semantic_config(endpoint, **llm))
    assert isinstance(app.backend, BackendRouter)
    if Mode.SEMANTIC not in app.pipeline.codecs:
        pytest.fail("SEMANTIC is not wired: build_codecs must give it app.backend")
    return app


# --- a real redis-server on a free loopback port ---------------------------------


class RedisServer:
    def __init__(self, binary: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            redis_command(binary, self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process must wake to die
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_tool("redis-server"))
    yield server
    server.kill()


def format1_zstd_envelope(data: bytes) -> bytes:
    """A ZSTD envelope as servers wrote them before format 4 (magic, length, hash, a frame
    with its magic and no checksum): they stay readable."""
    import zstandard

    from llmcompress.v1 import compression_pb2 as pb
    from llmcompress_server.core.envelope import MAGIC, text_hash

    frame = zstandard.ZstdCompressor(
        level=19, write_content_size=False, write_checksum=False, write_dict_id=False
    ).compress(data)
    env = pb.Envelope(
        magic=MAGIC,
        version=1,
        mode=pb.MODE_ZSTD,
        original_length=len(data),
        original_hash=text_hash(data),
        zstd=pb.ZstdBody(frame=frame),
    )
    return env.SerializeToString()


def metric_values(reader: Any, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """{sorted attribute pairs: value (gauges, counters)} of metric `name` in an OTel
    InMemoryMetricReader now."""
    data = reader.get_metrics_data()
    out: dict[tuple[tuple[str, Any], ...], Any] = {}
    for rm in data.resource_metrics if data is not None else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        key = tuple(sorted((point.attributes or {}).items()))
                        out[key] = point.value
    return out
