"""Typed config: the seed file loads unchanged; bad keys and values name themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmcompress_server.config import ConfigError, load_config
from llmcompress_server.domain import Mode

SEED = Path(__file__).resolve().parents[2] / "shared" / "examples" / "seed-config.yaml"


def test_seed_config_loads_unchanged() -> None:
    config = load_config(SEED, environ={})
    assert config.performance.max_concurrent == 8
    assert config.performance.cache_size == 50_000
    assert config.performance.cache_ttl == 7200
    assert config.model.ollama_endpoint == "http://localhost:11434"
    assert config.model.quality_threshold == 0.85
    assert config.compression.min_compress_length == 100
    assert config.monitoring.prometheus_port == 9090
    assert config.llm.rate_limit == 60


def test_defaults_without_a_file() -> None:
    config = load_config(environ={})
    assert config.server.port == 50051
    assert config.server.host == "127.0.0.1"
    assert config.compression.max_text_bytes == 4 * 1024 * 1024
    assert config.compression.default_mode is Mode.ZSTD
    assert config.llm.rate_limit == 0  # off: the seed file sets its own 60


def test_env_overrides_parse_like_yaml() -> None:
    env = {
        "LLMC_PERFORMANCE__MAX_CONCURRENT": "16",
        "LLMC_COMPRESSION__VERIFY": "false",
        "LLMC_SERVER": "not-a-config-key:1",  # the client's variable, ignored here
    }
    config = load_config(SEED, environ=env)
    assert config.performance.max_concurrent == 16
    assert config.compression.verify is False


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("performance:\n  max_concurent: 8\n")
    with pytest.raises(ConfigError, match=r"performance\.max_concurent: unknown key"):
        load_config(path, environ={})


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("compression:\n  default_mode: fastest\nmodel:\n  quality_threshold: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "compression.default_mode" in str(info.value)
    assert "model.quality_threshold" in str(info.value)


def test_bad_env_override_is_named() -> None:
    with pytest.raises(ConfigError, match=r"performance\.max_concurrent"):
        load_config(environ={"LLMC_PERFORMANCE__MAX_CONCURRENT": "many"})


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", environ={})
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(path, environ={})
