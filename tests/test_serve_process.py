"""`llmc serve` as a process, driven by a client generated from protos/ alone.

This is what a user of another stack does: grpcio-tools over protos/, no
llmcompress package. It runs in a separate interpreter without site hooks so
that nothing of ours is importable there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_process(port: int, **env: str) -> subprocess.Popen[str]:
    """`llmc serve` on `port` as a child process, once it listens; `env` adds LLMC_ keys."""
    environ = {
        **os.environ,
        "LLMC_MONITORING__ENABLE_PROMETHEUS": "false",
        "LLMC_MODEL__EMBEDDED__PRELOAD": "false",
        "LLMC_COMPRESSION__ZSTD_LEVEL": "19",  # conftest.TEST_ZSTD_LEVEL
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcompress.cli", "serve", "--port", str(port)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"llmc serve exited: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.1)
    proc.kill()
    pytest.fail("llmc serve did not listen within 60 s")


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    port = free_port()
    proc = serve_process(port)
    yield f"127.0.0.1:{port}"
    proc.terminate()  # SIGTERM: graceful stop
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "shutting down" in out


FOREIGN_CLIENT = textwrap.dedent(
    """
    import sys
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from llmcompress.v1 import compression_pb2 as pb, compression_pb2_grpc as pbg
    assert not hasattr(pb, "__llmcompress_package__")
    channel = grpc.insecure_channel(sys.argv[1])
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
    stub = pbg.CompressionServiceStub(channel)
    text = open(sys.argv[2], encoding="utf-8").read()
    resp = stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))
    back = stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
    print("ratio", round(resp.stats.ratio, 3), "exact", back.exact and back.text == text)
    """
)


def test_generated_client_round_trip(
    served: str, tmp_path: Path, corpus: list[dict[str, str]]
) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    well_known = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "protos/llmcompress/v1/compression.proto"),
        ]
    )
    assert rc == 0
    (out / "client.py").write_text(FOREIGN_CLIENT)
    sample = tmp_path / "sample.txt"
    sample.write_text(corpus[3]["text"], encoding="utf-8")
    # -S: no site hooks, so our editable install (the `llmcompress` client) is invisible.
    env = {
        "PYTHONPATH": f"{out}{os.pathsep}{sysconfig.get_paths()['purelib']}",
        "PATH": os.environ["PATH"],
    }
    done = subprocess.run(
        [sys.executable, "-S", str(out / "client.py"), served, str(sample)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "health SERVING" in done.stdout
    assert "exact True" in done.stdout
    ratio = float(done.stdout.split("ratio ")[1].split()[0])
    assert ratio > 1.2


def test_cli_compress_and_reconstruct(
    served: str, tmp_path: Path, corpus: list[dict[str, str]]
) -> None:
    text = corpus[10]["text"]
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    env = dict(os.environ, LLMC_SERVER=served)
    comp = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmcompress.cli",
            "compress",
            "--mode",
            "zstd",
            str(src),
            "-o",
            str(tmp_path / "e.llmc"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert comp.returncode == 0, comp.stderr
    assert "zstd:" in comp.stderr and "ratio" in comp.stderr
    back = subprocess.run(
        [sys.executable, "-m", "llmcompress.cli", "reconstruct", str(tmp_path / "e.llmc")],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert back.returncode == 0, back.stderr
    assert back.stdout.decode("utf-8") == text
    assert b"exact" in back.stderr


def test_cli_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmcompress.cli",
            "reconstruct",
            "--server",
            f"127.0.0.1:{port}",
            "--timeout",
            "3",
            "-",
        ],
        input=b"x",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert b"llmc serve" in done.stderr


def test_cli_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("performance:\n  max_concurrent: lots\n")
    done = subprocess.run(
        [sys.executable, "-m", "llmcompress.cli", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "performance.max_concurrent" in done.stderr


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


def test_default_metrics_port_beside_prometheus_and_a_second_server() -> None:
    """Metrics default to 9464, so a Prometheus on its own 9090 is no conflict; a second
    default server fails naming the setting, and serves once the setting differs."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 9464))
        except OSError:
            pytest.skip("port 9464 is in use on this machine: the default cannot be tried")
    prometheus = socket.socket()
    try:  # stands in for a Prometheus on 9090 (if one already holds it, that one does)
        prometheus.bind(("127.0.0.1", 9090))
        prometheus.listen()
    except OSError:
        pass
    metrics_on = {"LLMC_MONITORING__ENABLE_PROMETHEUS": "true"}
    first = serve_process(free_port(), **metrics_on)
    try:
        with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10) as page:
            assert b"target_info" in page.read()  # the OTel exporter's resource series
        second = subprocess.run(
            [sys.executable, "-m", "llmcompress.cli", "serve", "--port", str(free_port())],
            env={**os.environ, **metrics_on, "LLMC_MODEL__EMBEDDED__PRELOAD": "false"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode != 0
        assert "monitoring.prometheus_port" in second.stdout + second.stderr
        assert "9464" in second.stdout + second.stderr
        third = serve_process(
            free_port(), **metrics_on, LLMC_MONITORING__PROMETHEUS_PORT=str(free_port())
        )
        assert first.poll() is None and third.poll() is None  # both serve
        _stop(third)
    finally:
        _stop(first)
        prometheus.close()
