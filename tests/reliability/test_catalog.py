"""Every catalog row against one real server: the exact status, then a normal round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmcompress_server.app import App, create_server

from ..conftest import make_config
from .catalog import CASES, MAX_MESSAGE, MAX_QUEUE, MAX_TEXT, SAMPLE, Caller, Case

TOKEN = "reliability-token"


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
async def catalog_server(tokens_file: Path) -> AsyncIterator[App]:
    tokens = tokens_file
    config = make_config(
        compression={"max_text_bytes": MAX_TEXT},
        performance={"max_queue": MAX_QUEUE},
        security={"max_message_bytes": MAX_MESSAGE, "tokens_file": str(tokens)},
    )
    app = await create_server(config)
    await app.start()
    yield app
    await app.stop(grace=0)


@pytest.fixture
async def caller(catalog_server: App) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(catalog_server.address) as channel:
        yield Caller(catalog_server, channel, (("authorization", f"Bearer {TOKEN}"),))


def test_catalog_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_case(case: Case, caller: Caller) -> None:
    code = await case.run(caller)
    assert code == case.expect, f"{case.name}: got {code.name}, want {case.expect.name}"
    # ... and the server keeps serving: a fresh channel, a normal round trip.
    async with grpc.aio.insecure_channel(caller.app.address) as channel:
        after = Caller(caller.app, channel, caller.metadata)
        resp = await after.compress(SAMPLE)
        back = await after.reconstruct(resp.envelope)
    assert back.text == SAMPLE and back.exact
    assert caller.app.pipeline.admission.active == 0
