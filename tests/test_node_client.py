"""The polyglot check: tests/node/client.test.mjs (grpc-js + proto-loader, built
from protos/ alone) run with `node --test` against the real server."""

from __future__ import annotations

import asyncio
import os

import pytest

from .conftest import IN_CI, ROOT, StartServer, require_tool

pytestmark = pytest.mark.external


async def test_node_client_against_the_real_server(start_server: StartServer) -> None:
    node = require_tool("node")
    if not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        message = "Node packages are missing; run `make node` (npm install)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    app = await start_server()
    proc = await asyncio.create_subprocess_exec(
        node,
        "--test",
        str(ROOT / "tests" / "node" / "client.test.mjs"),
        cwd=ROOT,
        env={**os.environ, "LLMC_SERVER": app.address},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
    # Every test in the file ran and passed, none skipped.
    assert "# pass 3" in report, report
    assert "# fail 0" in report, report
