"""A throwaway redis-server for benches and tests (tests/conftest.py's RedisServer)."""

from __future__ import annotations


def redis_command(binary: str, port: int) -> list[str]:
    """The argv of a redis-server on 127.0.0.1:`port` that writes nothing to disk."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
