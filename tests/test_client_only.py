"""The distributions apart: a fresh venv with only `pip install ./protos/python ./client` (the
stubs and the client) talks to a server; the server's wheel holds no client code; the stubs'
descriptor is one under every module name; `create_server` keeps its public path.

The client must bring no server code, no llama.cpp and no numpy, and still
round-trip a text through `llmc serve` running as a separate process (from the
full install).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.test_serve_process import free_port, serve_process

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("llama_cpp", "numpy", "llmcompress_server")

ROUND_TRIP = """
import sys
import zipfile
from llmcompress import Client, Mode
from llmcompress.v1 import compression_pb2
text = open(sys.argv[2], encoding="utf-8").read()
with Client(sys.argv[1], timeout=60) as client:
    result = client.compress(text, Mode.ZSTD)
    back = client.reconstruct(result.envelope)
assert result.stats.mode is Mode.ZSTD, result.stats
assert back.exact and back.text == text
assert compression_pb2.Envelope.FromString(result.envelope).WhichOneof("body") == "zstd"
print("ok", round(result.stats.ratio, 2))
"""


def _skip_or_fail(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding `./protos/python`, `./client` and what they depend on, nothing else
    of ours."""
    where = tmp_path_factory.mktemp("client-only")
    venv = where / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        _skip_or_fail(f"cannot create a venv here (python -m venv): {made.stderr.strip()}")
    # Copies, so the builds leave no egg-info or build/ in the checkout.
    sources = [where / "proto", where / "client"]
    for folder, source in zip((ROOT / "protos" / "python", ROOT / "client"), sources, strict=True):
        shutil.copytree(folder, source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *map(str, sources)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if installed.returncode != 0:
        _skip_or_fail(
            f"pip install of the stubs and client failed (no package index?): {installed.stderr}"
        )
    return venv


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    port = free_port()
    proc = serve_process(port)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.communicate(timeout=30)


def test_client_venv_has_no_server_parts(client_venv: Path) -> None:
    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", probe, *FORBIDDEN],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.split() == []


def test_client_venv_round_trips_zstd(
    client_venv: Path, served: str, tmp_path: Path, corpus: list[dict[str, str]]
) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text(corpus[5]["text"], encoding="utf-8")
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP, encoding="utf-8")
    python = str(client_venv / "bin" / "python")
    done = subprocess.run(
        [python, str(script), served, str(sample)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")

    # The same through the client's own `llmc`.
    llmc = str(client_venv / "bin" / "llmc")
    envelope, back = tmp_path / "e.llmc", tmp_path / "back.txt"
    for args in (
        ["compress", "--mode", "zstd", str(sample), "-o", str(envelope)],
        ["reconstruct", str(envelope), "-o", str(back)],
    ):
        step = subprocess.run(
            [llmc, *args, "--server", served],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert step.returncode == 0, step.stderr
    assert back.read_bytes() == sample.read_bytes()


def test_client_venv_llmc_serve_says_what_to_install(client_venv: Path) -> None:
    done = subprocess.run(
        [str(client_venv / "bin" / "llmc"), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "llmcompress-server" in done.stderr
    assert "pip install ./protos/python ./client ." in done.stderr


def test_server_distribution_holds_no_client_code(tmp_path: Path) -> None:
    """`pip install .` (the server) brings the stubs distribution, never the client."""
    source = tmp_path / "src"
    skip = ("*.egg-info", ".*", "__pycache__", "bench", "build", "client", "docs", "tests")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip, "node_modules"))
    wheels = tmp_path / "wheels"
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
    built = subprocess.run(
        [sys.executable, "-m", *pip_wheel, str(source), "--wheel-dir", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("llmcompress_server-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/")[0] for name in archive.namelist()}
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [
            line.removeprefix("Requires-Dist: ").split(";")[0]
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    assert {p for p in packages if not p.endswith(".dist-info")} == {"llmcompress_server"}
    ours = [r for r in requires if r.startswith("llmcompress")]
    assert ours == ["llmcompress-proto==0.1.0"], requires


def test_one_descriptor_under_every_name() -> None:
    """The client's `llmcompress.v1` is the stubs distribution's module under another name: the
    proto file is registered once, under the name reflection and the wire know."""
    from google.protobuf import descriptor_pool

    from llmcompress.v1 import compression_pb2, compression_pb2_grpc
    from llmcompress_proto.v1 import compression_pb2 as pb
    from llmcompress_proto.v1 import compression_pb2_grpc as pb_grpc

    assert compression_pb2.Envelope is pb.Envelope
    assert compression_pb2_grpc.CompressionServiceStub is pb_grpc.CompressionServiceStub
    assert pb.DESCRIPTOR.name == "llmcompress/v1/compression.proto"
    found = descriptor_pool.Default().FindFileByName("llmcompress/v1/compression.proto")
    assert found is pb.DESCRIPTOR


def test_create_server_keeps_its_public_path() -> None:
    from llmcompress_server.api.server import create_server
    from llmcompress_server.app import create_server as public

    assert public is create_server
