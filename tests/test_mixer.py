"""The mixing row model (coding/mixer.py): alone on synthetic rows, and on the real model
through the real gRPC server (exact round trips, determinism, fingerprint, refusals)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.coding.mixer import MixerV1, Vocabulary, mixer_v1
from llmcompress_server.coding.rows import (
    IDENTITY,
    MIXER_V1,
    ROW_MODELS,
    IdentityRowModel,
    RowModel,
    StreamDecoder,
    StreamEncoder,
)
from llmcompress_server.core.config import ROW_MODEL_IDS, ConfigError

from .conftest import StartServer, make_config

Stub = pb_grpc.CompressionServiceStub

# -- the mixer alone, on synthetic rows ------------------------------------------------------

# A toy vocabulary: words, a space, a newline and a newline-led piece.
PIECES = [b"\n", b"\n\n", b" ", b"\r\n"] + [f"w{i}".encode() for i in range(196)]


def _rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, len(PIECES))).astype(np.float32)
    return np.exp(logits - logits.max(axis=1, keepdims=True)).astype(np.float32)


def _tokens(n: int, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    phrase = [int(t) for t in rng.integers(0, len(PIECES), size=40)]
    # A phrase, noise, then the phrase again twice: what the text repeats.
    noise = [int(t) for t in rng.integers(0, len(PIECES), size=n - 3 * len(phrase))]
    return phrase + noise + phrase + phrase


def _outputs(model: RowModel, rows: np.ndarray, tokens: list[int]) -> list[bytes]:
    out = []
    for row, token in zip(rows, tokens, strict=True):
        view = row.view()
        view.flags.writeable = False
        weights = model.distribution(view)
        out.append(weights.tobytes())
        model.update(token)
    return out


def _bits(model: RowModel, rows: np.ndarray, tokens: list[int]) -> np.ndarray:
    bits = []
    for row, token in zip(rows, tokens, strict=True):
        w = model.distribution(row).astype(np.float64)
        bits.append(-np.log2(w[token] / w.sum()))
        model.update(token)
    return np.array(bits)


def test_weights_are_finite_nonnegative_and_bit_identical_between_instances() -> None:
    rows, tokens = _rows(200), _tokens(200)
    make = mixer_v1(PIECES)
    a, b = _outputs(make(), rows, tokens), _outputs(make(), rows, tokens)
    assert a == b
    for raw in a:
        w = np.frombuffer(raw, dtype=np.float32)
        assert w.shape == (len(PIECES),)
        assert np.isfinite(w).all() and (w >= 0).all() and w.max() > 0


def test_a_stream_depends_only_on_its_own_rows_and_tokens() -> None:
    """Another stream's work in between (a neighbour slot) changes nothing."""
    rows, tokens = _rows(150), _tokens(150)
    make = mixer_v1(PIECES)
    alone = _outputs(make(), rows, tokens)
    mine, other = make(), make()
    other_rows, other_tokens = _rows(150, seed=5), _tokens(150, seed=6)
    beside = []
    for i in range(150):
        beside.append(mine.distribution(rows[i]).tobytes())
        other.distribution(other_rows[i])
        mine.update(tokens[i])
        other.update(other_tokens[i])
    assert beside == alone


def test_repeats_cost_fewer_bits_than_the_model_alone() -> None:
    rows, tokens = _rows(300), _tokens(300)
    mixed = _bits(mixer_v1(PIECES)(), rows, tokens)
    plain = _bits(IdentityRowModel(), rows, tokens)
    # The last repeat of the 40-token phrase: the match and n-gram models know it.
    assert mixed[-40:].sum() < 0.5 * plain[-40:].sum()
    assert mixed.sum() < plain.sum()


def test_range_coding_through_the_mixer_round_trips() -> None:
    rows, tokens = _rows(250), _tokens(250)
    make = mixer_v1(PIECES)
    encoder, model = StreamEncoder(tokens), make()
    for row in rows:
        model.update(encoder.code(model.distribution(row)))
    stream = encoder.finish()
    decoder, model = StreamDecoder(stream, len(tokens)), make()
    for row in rows:
        model.update(decoder.code(model.distribution(row)))
    assert decoder.finish() == tokens


def test_the_vocabulary_tables_follow_the_pieces() -> None:
    vocab = Vocabulary.of([b"ab", b"\nxy", b"\r\n", b"c\nd", b""])
    assert vocab.line_breaks.tolist() == [1, 2] and vocab.line_break_set == {1, 2}
    assert vocab.newline_tail == (-1, 2, 0, 1, -1)
    assert vocab.length == (2, 3, 2, 3, 0)
    model = MixerV1(vocab)
    probs = np.ones(5, np.float32)
    for token, column in [(0, 2), (0, 4), (3, 1), (2, 0), (0, 2)]:
        model.distribution(probs)
        model.update(token)
        assert model.column == column


def test_row_model_names_and_ids() -> None:
    assert set(ROW_MODEL_IDS.values()) == set(ROW_MODELS) == {IDENTITY, MIXER_V1}
    for value, expected in [("mixer-v1", 1), (1, 1), ("1", 1), ("identity", 0), (0, 0)]:
        cfg = make_config(model={"embedded": {"coding_row_model": value}})
        assert cfg.model.embedded.coding_row_model == expected
    for bad in ("mixer", 7, "-1", True):
        with pytest.raises(ConfigError, match=r"unknown row model .* use one of identity"):
            make_config(model={"embedded": {"coding_row_model": bad}})


# -- on the real model, through the real gRPC server ---------------------------------------

MIXER = {"coding_width": 4, "coding_narrow_when_idle": False, "coding_row_model": "mixer-v1"}
IDENTITY_SERVER = {**MIXER, "coding_row_model": "identity"}
PASSAGE_IDS = ("alice29-0136", "asyoulik-0218", "lcet10-0060")
# Names and phrases that come back: what the match and n-gram models are for.
REPEATS = (
    "The Mock Turtle sighed deeply. The Gryphon said: 'The Mock Turtle sighed deeply.'\n"
    "The Mock Turtle sighed deeply, and the Gryphon said it again: 'The Mock Turtle "
    "sighed deeply.' Alice said nothing. The Mock Turtle sighed deeply.\n"
)


def _text(corpus: list[dict[str, str]], item_id: str) -> str:
    return next(item["text"] for item in corpus if item["id"] == item_id)


async def _compress(stub: pb_grpc.CompressionServiceStub, text: str) -> pb.CompressResponse:
    return await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, verify=False))


async def _reconstruct(stub: pb_grpc.CompressionServiceStub, envelope: bytes) -> str:
    back = await stub.Reconstruct(pb.ReconstructRequest(envelope=envelope))
    assert back.exact and back.mode == pb.MODE_LOSSLESS
    return back.text


@pytest.mark.model
async def test_mixed_envelopes_round_trip_exactly_and_name_the_mixer(
    start_server: StartServer, corpus: list[dict[str, str]]
) -> None:
    texts = [_text(corpus, i) for i in PASSAGE_IDS] + [REPEATS]
    coder = await start_server(model={"embedded": MIXER})
    async with grpc.aio.insecure_channel(coder.address) as channel:
        sent = [await _compress(Stub(channel), t) for t in texts]
    await coder.stop(grace=0)
    # A fresh server reconstructs: everything the mixer needs is the envelope.
    fresh = await start_server(model={"embedded": MIXER})
    async with grpc.aio.insecure_channel(fresh.address) as channel:
        for text, resp in zip(texts, sent, strict=True):
            assert resp.stats.mode == pb.MODE_LOSSLESS, resp.stats.reason
            fp = pb.Envelope.FromString(resp.envelope).lossless.fingerprint
            assert fp.row_model == MIXER_V1
            assert await _reconstruct(Stub(channel), resp.envelope) == text


@pytest.mark.model
async def test_a_stream_codes_the_same_alone_and_beside_others(
    start_server: StartServer, corpus: list[dict[str, str]]
) -> None:
    """Same tokens in other slots, with other neighbours and entry steps: same bytes."""
    # No cache: the second compress of the text must be coded again.
    app = await start_server(model={"embedded": MIXER}, cache={"enabled": False})
    text = _text(corpus, PASSAGE_IDS[0])
    others = [item["text"][:300] for item in corpus[5::40]]
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = Stub(channel)
        alone = await _compress(stub, text)

        async def later(delay: float, t: str) -> pb.CompressResponse:
            await asyncio.sleep(delay)
            return await _compress(stub, t)

        crowd = await asyncio.gather(
            *(later(0.0, t) for t in others[:2]), later(0.3, text), later(0.1, others[2])
        )
    assert not crowd[2].stats.cache_hit
    streams = [pb.Envelope.FromString(r.envelope).lossless.stream for r in (alone, crowd[2])]
    assert streams[0] == streams[1]


@pytest.mark.model
async def test_batch_items_sharing_steps_are_each_exact(
    start_server: StartServer, corpus: list[dict[str, str]]
) -> None:
    app = await start_server(model={"embedded": MIXER})
    assert app.engine is not None
    await app.engine.start()
    texts = [item["text"][:250] for item in corpus[2::33]] + [REPEATS]

    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for n, text in enumerate(texts):
            yield pb.BatchCompressRequest(
                id=str(n), request=pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS)
            )

    async with grpc.aio.insecure_channel(app.address) as channel:
        answers = [a async for a in Stub(channel).BatchCompress(requests())]
        stats = app.engine.coding.stats
        assert stats.rows > 1.5 * stats.steps, stats  # items shared the engine's steps
        for answer in answers:
            assert answer.result.stats.mode == pb.MODE_LOSSLESS, answer
            fp = pb.Envelope.FromString(answer.result.envelope).lossless.fingerprint
            assert fp.row_model == MIXER_V1
            back = await _reconstruct(Stub(channel), answer.result.envelope)
            assert back == texts[int(answer.id)]


@pytest.mark.model
async def test_an_identity_envelope_decodes_on_a_mixer_server_and_unknown_ids_are_refused(
    start_server: StartServer, corpus: list[dict[str, str]]
) -> None:
    text = _text(corpus, PASSAGE_IDS[1])
    plain = await start_server(model={"embedded": IDENTITY_SERVER})
    async with grpc.aio.insecure_channel(plain.address) as channel:
        resp = await _compress(Stub(channel), text)
    assert pb.Envelope.FromString(resp.envelope).lossless.fingerprint.row_model == IDENTITY
    mixing = await start_server(model={"embedded": MIXER})
    env = pb.Envelope.FromString(resp.envelope)
    env.lossless.fingerprint.row_model = 9
    async with grpc.aio.insecure_channel(mixing.address) as channel:
        assert await _reconstruct(Stub(channel), resp.envelope) == text
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await Stub(channel).Reconstruct(pb.ReconstructRequest(envelope=env.SerializeToString()))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "row model: envelope 9, this server knows [0, 1]" in (info.value.details() or "")
