"""LOSSLESS primed by a corpus dictionary against LOSSLESS alone, in one run on one machine.

Primers are chosen from the `train` split of the Debian changelog corpus and measured
on its `test` split (other source packages):
- bits: the ideal code length (bits per byte) of test items and medium records, one
  stream each, without a primer and after each candidate primer (`choose_primer`'s cover
  at several budgets, and seeded random train samples at the same budget);
- speed: LOSSLESS encode (verify on, as the service runs it) of test items, with and
  without the chosen primer, alternating rounds: items/s and envelope body bytes.
`python -m bench.primer [--items N] [--medium N] [--budgets B ...] [--speed-items N]
[--no-bits] [-o out.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs import CompressOptions
from llmcompress_server.codecs import primer as primer_choice
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.core.config import load_config
from llmcompress_server.core.dictionary import Dictionary
from llmcompress_server.telemetry.stages import StageClock

ROOT = Path(__file__).resolve().parents[1]
CHANGELOGS = ROOT / "corpus" / "debian-changelogs"


def _records(name: str, split: str) -> list[str]:
    lines = (CHANGELOGS / f"changelog-{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["text"] for r in map(json.loads, lines) if r["split"] == split]


def _codec(**embedded: Any) -> LosslessCodec:
    config = load_config(
        environ={}, overrides={"model": {"embedded": {"preload": False, **embedded}}}
    )
    return LosslessCodec(EmbeddedEngine(config.model.embedded))


async def _tokens(codec: LosslessCodec, text: str) -> list[int]:
    return (await codec.tokenize(text.encode("utf-8"), escapes=True)).tokens


async def _random_primer(codec: LosslessCodec, samples: list[str], budget: int) -> str:
    picked, left = [], budget
    for s in random.Random(1).sample(samples, len(samples)):
        cost = len(await _tokens(codec, s + primer_choice.SEPARATOR))
        if cost <= left:
            picked.append(s)
            left -= cost
        if left < 20:
            break
    return primer_choice.primer_text(picked)


async def _bits(
    codec: LosslessCodec, sets: dict[str, list[list[int]]], nbytes: dict[str, int], primer: str
) -> dict[str, Any]:
    tokens = await codec.primer_tokens(Dictionary(primer=primer)) if primer else []
    t0 = time.perf_counter()
    out: dict[str, Any] = {"primer_tokens": len(tokens)}
    for name, texts in sets.items():
        bits = await codec.code_lengths(texts, tokens)
        out[name] = round(sum(bits) / nbytes[name], 4)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


async def _speed(
    codec: LosslessCodec, texts: list[str], dictionary: Dictionary | None, window: int
) -> tuple[float, int]:
    """Items/s and body bytes of LOSSLESS encodes (verify on), `window` at once."""
    gate = asyncio.Semaphore(window)
    opts = CompressOptions(verify=True, dictionary=dictionary)

    async def one(text: str) -> int:
        async with gate:
            encoded = await codec.encode(text, opts, StageClock())
            return int(encoded.envelope.ByteSize())

    t0 = time.perf_counter()
    sizes = await asyncio.gather(*(one(t) for t in texts))
    return len(texts) / (time.perf_counter() - t0), sum(sizes)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    codec = _codec()
    await codec.engine.start()
    rng = random.Random(0)
    train = _records("items", "train")
    items = rng.sample(_records("items", "test"), args.items)
    room = codec.n_ctx - codec.max_primer_tokens()
    medium = []
    for text in rng.sample(_records("medium", "test"), len(_records("medium", "test"))):
        tokens = await _tokens(codec, text)
        if len(tokens) <= room:
            medium.append(tokens)
        if len(medium) == args.medium:
            break
    sets = {"items": [await _tokens(codec, t) for t in items], "medium": medium}
    nbytes = {"items": sum(len(t.encode()) for t in items), "medium": 0}
    for tokens in medium:
        nbytes["medium"] += len(await codec.detokenize(tokens))
    report: dict[str, Any] = {
        "items": len(items),
        "item_bytes": nbytes["items"],
        "medium": len(medium),
        "medium_bytes": nbytes["medium"],
        "bits_per_byte": {},
    }
    candidates: dict[str, str] = {"none": ""}
    t0 = time.perf_counter()
    for budget in args.budgets:
        candidates[f"cover-{budget}"] = await codec.choose_primer(train, budget)
        report.setdefault("choose_seconds", {})[budget] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
    for budget in args.random_budgets:
        candidates[f"random-{budget}"] = await _random_primer(codec, train, budget)
    for name, primer in candidates.items():
        if not args.bits:
            break
        report["bits_per_byte"][name] = await _bits(codec, sets, nbytes, primer)
        print(name, report["bits_per_byte"][name], file=sys.stderr, flush=True)
    if args.speed_items:
        # LOSSLESS as the service runs it, the same items without and with each primer,
        # alternating so that a neighbour's load falls on both.
        texts = items[: args.speed_items]
        chosen = {"none": None} | {
            f"cover-{b}": Dictionary(primer=candidates[f"cover-{b}"]) for b in args.budgets
        }
        for dictionary in chosen.values():  # the primers' cells, made before timing
            await codec.encode(texts[0], CompressOptions(dictionary=dictionary), StageClock())
        runs: dict[str, list[float]] = {name: [] for name in chosen}
        sizes: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, dictionary in chosen.items():
                rate, size = await _speed(codec, texts, dictionary, args.window)
                runs[name].append(round(rate, 3))
                sizes[name] = size
                print(name, runs[name], size, file=sys.stderr, flush=True)
        report["speed"] = {
            "items": len(texts),
            "items_per_s": runs,
            "body_bytes": sizes,
            "speed_vs_none": {n: round(sum(r) / sum(runs["none"]), 3) for n, r in runs.items()},
            "bytes_vs_none": {n: round(b / sizes["none"], 4) for n, b in sizes.items()},
        }
    report["primer_cache_bytes"] = codec.primer_states.nbytes
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=150)
    parser.add_argument("--medium", type=int, default=8)
    parser.add_argument("--budgets", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--random-budgets", type=int, nargs="*", default=[1024])
    parser.add_argument("--speed-items", type=int, default=60)
    parser.add_argument("--no-bits", dest="bits", action="store_false")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(measure(args))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
