"""Coverage-guided fuzzing of every decoder with the real model (atheris), for `make fuzz`.

    .venv/bin/python -m tests.reliability.fuzz_codecs_atheris -max_total_time=900

The pipeline and seeds of codec_property (ZSTD, LOSSLESS and every SEMANTIC body
kind, decoded by the embedded model; abstractive expansions by the simulated
Ollama), seeded into .venv/fuzz-corpus/codecs, and the property of
envelope_property.check. An input can cost seconds of model work, so bound the run
by time (-max_total_time) rather than by -runs. Needs `pip install -e '.[fuzz]'`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["llmcompress_server", "zstandard", "brotli"]):
    from tests.reliability.codec_property import MODEL_WITHIN, run_model_pipeline
    from tests.reliability.envelope_property import check

LOOP = asyncio.new_event_loop()
CORPUS = Path(__file__).resolve().parents[2] / ".venv" / "fuzz-corpus" / "codecs"


def main() -> None:
    model = run_model_pipeline(LOOP)

    def one_input(data: bytes) -> None:
        check(LOOP, data, model.pipeline, MODEL_WITHIN)

    CORPUS.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(model.seeds):
        (CORPUS / f"seed-{i}").write_bytes(seed)
    # -max_len: room for the largest seed plus growth.
    atheris.Setup(
        [*sys.argv, f"-max_len={max(map(len, model.seeds)) + 256}", str(CORPUS)], one_input
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
