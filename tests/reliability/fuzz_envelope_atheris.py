"""Coverage-guided fuzzing of the envelope decoder with atheris (libFuzzer), for `make fuzz`.

    .venv/bin/python -m tests.reliability.fuzz_envelope_atheris -runs=100000

Starts from real envelopes (seeded into .venv/fuzz-corpus/envelope, which
libFuzzer grows and later runs reuse; libFuzzer exits the process, so no
temporary directory could be cleaned up) and checks
the same property as the hypothesis test (envelope_property.check). libFuzzer
flags pass through, e.g. -max_total_time=120. Needs `pip install -e '.[fuzz]'`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["llmcompress_server", "zstandard"]):
    from tests.reliability.envelope_property import SEEDS, check

LOOP = asyncio.new_event_loop()
CORPUS = Path(__file__).resolve().parents[2] / ".venv" / "fuzz-corpus" / "envelope"


def one_input(data: bytes) -> None:
    check(LOOP, data)


def main() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (CORPUS / f"seed-{i}").write_bytes(seed)
    # -max_len: room for the largest seed plus growth.
    atheris.Setup([*sys.argv, f"-max_len={max(map(len, SEEDS)) + 64}", str(CORPUS)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
