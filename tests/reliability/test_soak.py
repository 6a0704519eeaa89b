"""The soak (`make soak`, 10 minutes) kept from rotting: the same run for 15 seconds.

RSS growth needs the long run to mean anything; here only the outcomes are checked:
calls refused (the server really was over capacity), each refusal with a retry hint,
no other status, nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(600)
async def test_a_short_soak_sees_only_documented_outcomes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.soak",
        "--minutes",
        "0.25",
        "--warmup-minutes",
        "0.1",
        "--out",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert checks["only documented statuses"], (report["other_statuses"], err.decode())
    assert checks["nothing lost"], report["lost"]
    assert checks["overloaded (calls were refused)"], report["calls"]
    assert report["done"]["compress"] and report["done"]["reconstruct"] and report["done"]["batch"]
