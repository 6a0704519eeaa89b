"""Typed config: the seed file loads unchanged; bad keys and values name themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmcompress_server.core.config import ConfigError, load_config
from llmcompress_server.core.domain import Mode

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed-config.yaml"


def test_seed_config_loads_unchanged() -> None:
    config = load_config(SEED, environ={})
    assert config.performance.max_concurrent == 8
    assert config.performance.cache_size == 50_000
    assert config.performance.cache_ttl == 7200
    assert config.model.ollama_endpoint == "http://localhost:11434"
    assert config.model.quality_threshold == 0.85
    assert config.compression.min_compress_length == 100
    assert config.monitoring.prometheus_port == 9090  # the seed sets it; the default is 9464
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


def test_seed_env_names_map_to_our_keys_and_llmc_wins() -> None:
    """The seed's BATCH_SIZE and MAX_CONCURRENT set performance.batch_size (the BatchCompress
    window) and performance.max_concurrent (the per-endpoint in-flight limit)."""
    seed_env = {"BATCH_SIZE": "48", "MAX_CONCURRENT": "4"}
    config = load_config(SEED, environ=seed_env)
    assert config.performance.batch_size == 48  # the file says 32
    assert config.performance.max_concurrent == 4  # the file says 8
    assert config.performance.batch_window == 48
    both = {**seed_env, "LLMC_PERFORMANCE__MAX_CONCURRENT": "16"}
    config = load_config(SEED, environ=both)
    assert config.performance.max_concurrent == 16
    assert config.performance.batch_size == 48
    # Empty means unset, as for a shell's `BATCH_SIZE=`.
    assert load_config(SEED, environ={"BATCH_SIZE": ""}).performance.batch_size == 32


def test_bad_seed_env_value_names_key_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"performance\.max_concurrent: .*from MAX_CONCURRENT"):
        load_config(SEED, environ={"MAX_CONCURRENT": "lots"})
    # When the LLMC_ form wins, the error names only that value.
    with pytest.raises(ConfigError) as info:
        load_config(
            SEED, environ={"MAX_CONCURRENT": "4", "LLMC_PERFORMANCE__MAX_CONCURRENT": "lots"}
        )
    assert "from MAX_CONCURRENT" not in str(info.value)


def test_cost_prices_and_reference(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "cost:\n"
        "  prices:\n"
        '    "qwen2.5:7b-instruct-q4_k_m": {input: 0.05, output: 0.1}\n'
        '    "gpt-4o-mini": {input: 0.15, output: 0.6}\n'
        '  reference: "gpt-4o-mini"\n'
    )
    config = load_config(path, environ={})
    assert config.cost.prices["gpt-4o-mini"].output == 0.6
    assert config.cost.reference == "gpt-4o-mini"
    assert load_config(environ={}).cost.prices == {}
    path.write_text('cost:\n  prices: {}\n  reference: "gpt-4o"\n')
    with pytest.raises(ConfigError, match=r"cost\.reference 'gpt-4o' has no entry in cost\.prices"):
        load_config(path, environ={})
    path.write_text("cost:\n  prices:\n    m: {input: -1, output: 0}\n")
    with pytest.raises(ConfigError, match=r"cost\.prices\.m\.input"):
        load_config(path, environ={})


def test_serve_prints_the_seed_config_with_seed_env_names() -> None:
    """`llmc serve --print-config`, as a process: the seed file plus BATCH_SIZE and
    MAX_CONCURRENT from the environment shows the mapped values (LLMC_ winning)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMC_")}
    env |= {"BATCH_SIZE": "64", "MAX_CONCURRENT": "4", "LLMC_PERFORMANCE__BATCH_SIZE": "24"}
    done = subprocess.run(
        [sys.executable, "-m", "llmcompress.cli", "serve", "--config", str(SEED), "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["performance"]["max_concurrent"] == 4  # MAX_CONCURRENT over the file's 8
    assert shown["performance"]["batch_size"] == 24  # LLMC_ over BATCH_SIZE over the file's 32
    assert shown["model"]["ollama_endpoint"] == "http://localhost:11434"  # the file, unchanged
    assert shown["cost"] == {"prices": {}, "reference": None}
