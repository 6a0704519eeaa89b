"""LOSSLESS primed by a corpus dictionary, on the real model: exact by construction.

A primed stream starts from the KV cells a stream of the primer's tokens left at the
same context key, copied in; these tests check that both sides get the same cells
whatever else runs beside them, that two primers never decode each other's bodies,
and that no primer leaves the envelope as it was. CI-sized: n_ctx 256, primers of a
few dozen tokens, Debian changelog items of ~100 bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.backends.embedded import EmbeddedEngine
from llmcompress_server.codecs import CompressOptions
from llmcompress_server.codecs.lossless import LosslessCodec, primed_layout
from llmcompress_server.codecs.primer import choose_primer, primer_text
from llmcompress_server.codecs.semantic import summary_coding
from llmcompress_server.coding.layout import Schedule
from llmcompress_server.coding.primer import PrimerStates
from llmcompress_server.core.config import load_config
from llmcompress_server.core.dictionary import Dictionary
from llmcompress_server.core.errors import DataLoss
from llmcompress_server.telemetry.stages import StageClock

pytestmark = pytest.mark.model

ITEMS = Path(__file__).resolve().parents[1] / "corpus" / "debian-changelogs"
N_CTX = 256


def _items(split: str) -> list[str]:
    lines = (ITEMS / "changelog-items.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["text"] for r in map(json.loads, lines) if r["split"] == split]


TRAIN = _items("train")
TEST = _items("test")[::97][:6]
PRIMER_A = Dictionary(primer=primer_text(TRAIN[:4]))
PRIMER_B = Dictionary(primer=primer_text(TRAIN[40:44]))


async def _codec(width: int, **embedded: Any) -> LosslessCodec:
    config = load_config(
        environ={},
        overrides={
            "model": {
                "embedded": {
                    "preload": False,
                    "n_ctx": N_CTX,
                    "coding_width": width,
                    "coding_narrow_when_idle": False,
                    **embedded,
                }
            }
        },
    )
    codec = LosslessCodec(EmbeddedEngine(config.model.embedded))
    await codec.engine.start()
    return codec


@pytest.fixture(scope="module")
async def wide() -> AsyncIterator[LosslessCodec]:
    codec = await _codec(4)
    yield codec
    await codec.engine.close()


async def _encode(codec: LosslessCodec, text: str, dictionary: Dictionary | None) -> pb.Envelope:
    opts = CompressOptions(verify=False, dictionary=dictionary)
    return (await codec.encode(text, opts, StageClock())).envelope


async def _decode(codec: LosslessCodec, env: pb.Envelope, dictionary: Dictionary | None) -> str:
    """The codec's decode of `env` as the pipeline would seal it (header fields set)."""
    sealed = pb.Envelope()
    sealed.CopyFrom(env)
    sealed.original_length = 4096
    sealed.model.CopyFrom(codec.engine.identity.to_pb())
    return (await codec.decode(sealed, StageClock(), dictionary=dictionary)).text


async def test_no_primer_leaves_the_envelope_as_it_was(wide: LosslessCodec) -> None:
    text = TEST[0]
    plain = await _encode(wide, text, None)
    for dictionary in (Dictionary(), Dictionary(zstd=b"\x37\xa4\x30\xec", primer="")):
        env = await _encode(wide, text, dictionary)
        assert env.SerializeToString(deterministic=True) == plain.SerializeToString(
            deterministic=True
        )
    assert await _decode(wide, plain, Dictionary(zstd=b"x")) == text


async def test_a_primed_text_round_trips_and_codes_smaller(wide: LosslessCodec) -> None:
    for text in TEST[:3]:
        primed = await _encode(wide, text, PRIMER_A)
        plain = await _encode(wide, text, None)
        assert primed.lossless.stream != plain.lossless.stream
        assert await _decode(wide, primed, PRIMER_A) == text
    # Over a few items the primer pays (per item it may not).
    sizes = [
        (len((await _encode(wide, t, PRIMER_A)).lossless.stream),
         len((await _encode(wide, t, None)).lossless.stream))
        for t in TEST
    ]  # fmt: skip
    assert sum(p for p, _ in sizes) < sum(n for _, n in sizes)


async def test_two_primers_never_decode_each_others_bodies(wide: LosslessCodec) -> None:
    text = TEST[1]
    a = await _encode(wide, text, PRIMER_A)
    b = await _encode(wide, text, PRIMER_B)
    assert a.lossless.stream != b.lossless.stream
    assert await _decode(wide, a, PRIMER_A) == text
    assert await _decode(wide, b, PRIMER_B) == text
    for env, wrong in ((a, PRIMER_B), (b, PRIMER_A), (a, None)):
        try:
            back = await _decode(wide, env, wrong)
        except DataLoss:
            continue
        assert back != text  # the pipeline's length and hash check then refuse it


async def test_primed_streams_beside_any_neighbours_decode_alone_at_their_width(
    wide: LosslessCodec,
) -> None:
    """Primed (two primers) and unprimed texts in one width-4 context at once, entering
    at different steps: each body is the one it gets alone, and decodes alone."""
    dictionaries = [PRIMER_A, None, PRIMER_B, PRIMER_A, None, PRIMER_B]
    alone = [await _encode(wide, t, d) for t, d in zip(TEST, dictionaries, strict=True)]

    async def later(i: int) -> pb.Envelope:
        await asyncio.sleep(0.05 * i)
        return await _encode(wide, TEST[i], dictionaries[i])

    together = await asyncio.gather(*(later(i) for i in range(len(TEST))))
    for i, env in enumerate(together):
        assert env.lossless.fingerprint.width == 4
        assert env.lossless.stream == alone[i].lossless.stream
        assert await _decode(wide, env, dictionaries[i]) == TEST[i]


async def test_a_width_1_primed_encode_decodes_at_width_1_on_a_fresh_engine(
    wide: LosslessCodec,
) -> None:
    narrow = await _codec(1)
    try:
        env = await _encode(narrow, TEST[2], PRIMER_A)
        assert env.lossless.fingerprint.width == 0  # width 1
    finally:
        await narrow.engine.close()
    # A fresh engine makes the primer's cells again (on the wide server's width-1 context).
    fresh = await _codec(1)
    try:
        assert await _decode(fresh, env, PRIMER_A) == TEST[2]
    finally:
        await fresh.engine.close()
    assert await _decode(wide, env, PRIMER_A) == TEST[2]


async def test_a_primed_text_over_the_context_splits_and_round_trips(
    wide: LosslessCodec,
) -> None:
    """Streams get the context the primer leaves: a text longer than that splits."""
    primer = await wide.primer_tokens(PRIMER_A)
    text = " ".join(TRAIN[100:106])
    tokens = (await wide.tokenize(text.encode())).tokens
    room = primed_layout(Schedule.RESET, N_CTX, len(primer)).n_ctx
    assert room == N_CTX - len(primer) < len(tokens)
    env = await _encode(wide, text, PRIMER_A)
    assert len(env.lossless.chunk_words) >= 2
    assert await _decode(wide, env, PRIMER_A) == text


async def test_a_primer_over_half_the_context_keeps_its_last_tokens(wide: LosslessCodec) -> None:
    long = Dictionary(primer=primer_text(TRAIN[:40]))
    tokens = await wide.primer_tokens(long)
    whole = (await wide.tokenize(long.primer.encode(), escapes=True)).tokens
    assert len(tokens) == N_CTX // 2 and tokens == whole[-(N_CTX // 2) :]
    env = await _encode(wide, TEST[3], long)
    assert await _decode(wide, env, long) == TEST[3]


async def test_primer_cells_are_shared_bounded_and_made_once(wide: LosslessCodec) -> None:
    engine = wide.engine.coding
    key = wide.key
    a = await wide.primer_tokens(PRIMER_A)
    b = await wide.primer_tokens(PRIMER_B)
    states = PrimerStates(engine, max_bytes=1)
    first, again = await asyncio.gather(states.get(key, a), states.get(key, a))
    assert first is again and states.made == 1 and first.length == len(a)
    assert first.next_token == a[-1]
    await states.get(key, b)  # over the bound: only the newest stays
    assert states.made == 2 and states.nbytes == (await states.get(key, b)).nbytes
    await states.get(key, a)
    assert states.made == 3


async def test_choose_primer_covers_what_samples_share_within_its_budget() -> None:
    async def words(text: str) -> int:
        return len(text.split()) + 1

    shared = [f"* Bump Standards-Version to 4.6.{i}, no changes needed." for i in range(8)]
    odd = ["zebra quokka " * 5, "xylophone narwhal " * 5]
    samples = odd + shared
    primer = await choose_primer(samples, 30, words)
    assert "Standards-Version" in primer and "zebra" not in primer
    assert await words(primer) <= 30
    assert primer == await choose_primer(samples, 30, words)  # the same samples, the same primer
    assert await choose_primer(["one of a kind"], 30, words) == ""


async def test_choose_primer_on_the_codec_fits_its_budget(wide: LosslessCodec) -> None:
    primer = await wide.choose_primer(TRAIN[:300], 100)
    assert primer
    assert len(await wide.primer_tokens(Dictionary(primer=primer))) <= 100


async def test_a_semantic_coded_body_goes_through_the_same_primer(wide: LosslessCodec) -> None:
    summary = TEST[4]
    primer = await wide.primer_tokens(PRIMER_A)
    coded = await summary_coding.code_prefixes(wide, [summary], 1 << 20, primer)
    assert coded is not None
    whole = coded.prefixes[-1]
    body = pb.LosslessBody(
        fingerprint=coded.fingerprint, stream=whole.stream, n_tokens=whole.tokens
    )
    assert await summary_coding.decodes_to(wide, body, coded.tokens, primer)
    assert not await summary_coding.decodes_to(wide, body, coded.tokens)
    env = pb.Envelope(
        mode=pb.MODE_SEMANTIC,
        model=wide.engine.identity.to_pb(),
        original_length=len(summary.encode()),
        semantic=pb.SemanticBody(coded=body),
    )
    assert await summary_coding.decode_text(wide, env, primer) == summary
