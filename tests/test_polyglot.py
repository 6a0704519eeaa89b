"""The C++ and Go example clients (examples/, stubs from protos/ by `make polyglot`,
Debian's gRPC packages only) run as processes against `llmc serve`."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from .conftest import IN_CI, ROOT
from .test_serve_process import free_port, serve_process

pytestmark = pytest.mark.external

# What each client needs; .ci/run installs exactly these.
PACKAGES = {
    "cpp": ["protobuf-compiler", "protobuf-compiler-grpc", "libgrpc++-dev", "pkg-config", "g++"],
    # golang-github-golang-protobuf-1-5-dev, not the 1.3 one apt picks by default:
    # grpc-go's codec must handle messages from the current protoc-gen-go.
    "go": ["protobuf-compiler", "golang-go", "golang-google-grpc-dev", "golang-google-protobuf-dev",
           "golang-github-golang-protobuf-1-5-dev", "protoc-gen-go", "protoc-gen-go-grpc"],
}  # fmt: skip
BINARY = {
    "cpp": ROOT / "build" / "polyglot" / "cpp" / "llmc-cpp-client",
    "go": ROOT / "build" / "polyglot" / "go" / "llmc-go-client",
}
ITEMS = 120  # the clients' default BatchCompress size; item ITEMS // 2 is the bad one
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


def require_packages(lang: str) -> None:
    """Skip loudly with the install command when a package is missing; under CI, fail."""
    needed = PACKAGES[lang]
    missing = needed
    if shutil.which("dpkg-query"):
        query = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *needed],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        installed = {
            line.split()[0] for line in query.stdout.splitlines() if line.endswith(" installed")
        }
        missing = [name for name in needed if name not in installed]
    if missing:
        message = (
            f"the {lang} client needs Debian packages {' '.join(missing)}: "
            f"apt-get install --no-install-recommends {' '.join(needed)}"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module", params=["cpp", "go"])
def client(request: pytest.FixtureRequest) -> Path:
    """The client binary, built by the commands `make polyglot` runs (examples/Makefile)."""
    lang: str = request.param
    require_packages(lang)
    build = subprocess.run(
        ["make", "--no-print-directory", "-C", "examples", lang],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    return BINARY[lang]


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    port = free_port()
    proc = serve_process(port)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def served_with_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    token = "polyglot-" + os.urandom(8).hex()
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{token}\n")
    port = free_port()
    proc = serve_process(port, LLMC_SECURITY__TOKENS_FILE=str(tokens))
    yield f"127.0.0.1:{port}", token
    proc.terminate()
    proc.communicate(timeout=30)


def run(binary: Path, *args: str, token: str | None = None) -> tuple[int, dict[str, Any], str]:
    """Run a client; its JSON lines by check name, and its output for failure messages."""
    env = {k: v for k, v in os.environ.items() if k != "LLMC_TOKEN"}
    if token is not None:
        env["LLMC_TOKEN"] = token
    done = subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    checks = {line["check"]: line for line in lines}
    assert len(checks) == len(lines), f"a check was reported twice:\n{done.stdout}"
    return done.returncode, checks, done.stdout + done.stderr


def test_round_trip_and_batch_with_a_bad_item(
    client: Path, served: str, corpus: list[dict[str, str]], tmp_path: Path
) -> None:
    # The corpus is ASCII; the added line makes the byte check cover multi-byte UTF-8.
    text = corpus[3]["text"] + "\nnaïve café, 東京, 🚀\n"
    sample = tmp_path / "sample.txt"
    sample.write_bytes(text.encode("utf-8"))
    code, checks, out = run(client, "--text-file", str(sample), served)
    assert code == 0, out

    compress = checks["compress"]
    assert compress["mode"] == "MODE_ZSTD", out
    assert compress["original_bytes"] == len(text.encode("utf-8")), out
    assert compress["compressed_bytes"] == compress["envelope_bytes"] > 0, out
    back = checks["reconstruct"]
    assert back["bytes_equal"] is True and back["exact"] is True, out
    assert back["bytes"] == len(text.encode("utf-8")), out

    batch = checks["batch"]
    assert batch["sent"] == batch["answers"] == batch["unique_ids"] == ITEMS, out
    assert batch["missing"] == batch["duplicates"] == batch["unknown_ids"] == 0, out
    assert batch["errors"] == 1, out
    assert batch["bad_id"].endswith(f"-{ITEMS // 2}"), out
    assert batch["bad_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0], out
    assert batch["bad_message"].startswith("mode 99 is not a known Mode; use "), out
    # The stream went on past the bad item, and every result reconstructs exactly.
    assert batch["answered_after_bad"] == ITEMS - ITEMS // 2 - 1, out
    assert batch["results"] == batch["results_exact"] == ITEMS - 1, out
    assert all(line["ok"] is True for line in checks.values()), out


def test_bearer_token(client: Path, served_with_token: tuple[str, str]) -> None:
    address, token = served_with_token
    code, checks, out = run(client, "--items", "10", address, token=token)  # from $LLMC_TOKEN
    assert code == 0 and checks["batch"]["ok"] is True, out

    code, checks, out = run(client, address)
    assert code == 1 and set(checks) == {"compress"}, out
    assert checks["compress"]["code"] == UNAUTHENTICATED, out
    assert "requires a bearer token" in checks["compress"]["message"], out

    code, checks, out = run(client, "--token", "not-" + token, address, token=token)  # flag wins
    assert code == 1 and checks["compress"]["code"] == UNAUTHENTICATED, out
    assert "not valid" in checks["compress"]["message"], out


def test_every_call_has_a_deadline(client: Path) -> None:
    # A listener that accepts connections and never speaks HTTP/2, like a hung server:
    # without a deadline the client would wait forever.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        code, checks, out = run(client, "--timeout", "1", f"127.0.0.1:{silent.getsockname()[1]}")
    assert code == 1, out
    assert checks["compress"]["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], out


def test_ci_installs_what_the_clients_need() -> None:
    words = set(re.split(r"[\s;()]+", (ROOT / ".ci" / "run").read_text()))
    missing = {pkg for needed in PACKAGES.values() for pkg in needed} - words
    assert not missing, f".ci/run does not install {sorted(missing)}"
