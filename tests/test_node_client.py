"""The polyglot check: tests/node/client.test.mjs (grpc-js + proto-loader, built
from protos/ alone) run with `node --test` against the real server."""

from __future__ import annotations

import asyncio
import os

import pytest

from .conftest import ROOT, StartServer, missing_part, require_tool

pytestmark = pytest.mark.external


async def test_node_client_against_the_real_server(start_server: StartServer) -> None:
    node = require_tool("node")
    if not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing_part("Node packages (@grpc/grpc-js)", "make node")
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


async def test_make_stubs_gives_typescript_types_that_check() -> None:
    require_tool("node")
    tsc = ROOT / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        missing_part("Node packages (typescript)", "make node")
    make = await asyncio.create_subprocess_exec(
        "make", "--no-print-directory", "stubs", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(make.communicate(), timeout=300)
    assert make.returncode == 0, out.decode()
    assert (ROOT / "stubs" / "ts" / "llmcompress" / "v1" / "CompressionService.ts").is_file()
    assert (ROOT / "stubs" / "llmcompress.binpb").stat().st_size > 1000

    # The real client file, and a copy with a mode the contract does not have:
    # the types must accept the first and reject the second.
    good = ROOT / "tests" / "node" / "typed_client.ts"
    bad = ROOT / "stubs" / "check" / "wrong_mode.ts"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(
        good.read_text()
        .replace("../../stubs/ts/", "../ts/")
        .replace('mode: "MODE_ZSTD", verify: true', 'mode: "MODE_FASTEST", verify: true')
    )
    tsc_run = await asyncio.create_subprocess_exec(
        str(tsc), "--noEmit", "--strict", "--target", "es2022", "--module", "nodenext",
        "--moduleResolution", "nodenext", "--types", "node", str(good), str(bad),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(tsc_run.communicate(), timeout=300)
    report = out.decode()
    errors = [line for line in report.splitlines() if "error TS" in line]
    assert tsc_run.returncode != 0, report
    assert errors and all(line.startswith("stubs/check/wrong_mode.ts") for line in errors), report
    assert "MODE_FASTEST" in report
