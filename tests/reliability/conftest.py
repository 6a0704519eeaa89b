"""Fixtures of the reliability tests: the fuzzers' private event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private loop: hypothesis drives sync tests, and each example runs one call on it."""
    own = asyncio.new_event_loop()
    yield own
    own.run_until_complete(own.shutdown_default_executor())
    own.close()
