"""Exact tokenization: every UTF-8 text LOSSLESS can code goes through, with the decoder unchanged.

The tokenizer tests load only the model's vocabulary (no weights, under a
second); the round trips run the real model through the real gRPC server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import llama_cpp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.backends.embedded import EmbeddedEngine, default_model_path
from llmcompress_server.codecs.lossless import LosslessCodec
from llmcompress_server.codecs.semantic import summary_coding
from llmcompress_server.coding.tokens import ExactTokenizer, Unrepresentable, escape, unescape
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.errors import DataLoss

from .conftest import CORPUS, StartServer, make_config

ROOT = Path(__file__).resolve().parents[1]
ALICE = CORPUS.parent / "alice29.txt"
# The Lobster Quadrille: "out to\r\n" + 54 spaces + "sea!"; the tokenizer's newline-and-48-
# spaces token comes back empty from llama-cpp-python's detokenize.
RUN = b"out to\r\n" + b" " * 54 + b'sea!"'
# Bytes SmolLM2's vocabulary has no token for: six C0 controls, and the lead bytes of
# the UTF-8 of planes 4-11 (0xF1, 0xF2) besides the bytes valid UTF-8 never holds.
MISSING = {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)}


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    llama = llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def exact(vocab: Any) -> ExactTokenizer:
    return ExactTokenizer(vocab)


def canonical_round_trips(vocab: Any, data: bytes) -> bool:
    tokens = vocab.tokenize(data, add_bos=False, special=False)
    return bool(vocab.detokenize(tokens, special=False) == data)


def alice_slice() -> bytes:
    """About 600 bytes of alice29.txt around the 54-space run."""
    data = ALICE.read_bytes()
    at = data.index(RUN)
    return data[at - 300 : at + 300]


def test_the_vocabulary_lacks_exactly_these_bytes(exact: ExactTokenizer) -> None:
    assert exact.missing_bytes == MISSING


def test_alice29_is_tokenized_exactly_where_the_tokenizer_is_not(
    vocab: Any, exact: ExactTokenizer
) -> None:
    data = ALICE.read_bytes()
    assert not canonical_round_trips(vocab, data)
    out = exact.tokenize(vocab, data)
    assert vocab.detokenize(out.tokens, special=False) == data
    # Only the run is coded piecewise: a few tokens near it, out of 152,089 bytes.
    assert 0 < out.piecewise_bytes < 200
    canonical = vocab.tokenize(data, add_bos=False, special=False)
    assert abs(len(out.tokens) - len(canonical)) < 10


def test_a_text_the_tokenizer_reproduces_keeps_its_tokens(
    vocab: Any, exact: ExactTokenizer, corpus: list[dict[str, str]]
) -> None:
    data = corpus[0]["text"].encode()
    assert canonical_round_trips(vocab, data)
    out = exact.tokenize(vocab, data)
    assert out.tokens == vocab.tokenize(data, add_bos=False, special=False)
    assert out.piecewise_bytes == 0


@pytest.mark.parametrize(
    "text",
    [
        "a" + " " * 300 + "b\n" + "\t" * 90 + "c",  # long space and tab runs
        "title\r\n" + "\r\n".join(f"line {i}" for i in range(20)) + "\r\n" + " " * 70 + "end",
        "\x00 nul \x1b[31mred\x1b[0m \x0c form feed \x07\x08\x7f",
        "e\u0301 a\u0308\u0323 \u05e9\u05dc\u05d5\u05dd \u202eRTL\u202c \U0001f389 "
        "\U0001f469\u200d\U0001f469\u200d\U0001f467 \ufeff",
        "-" * 200 + "\n" + "#" * 130 + "\n" + "=" * 64,
    ],
    ids=["space-tab-runs", "crlf", "control-chars", "marks-emoji-rtl", "rules"],
)
def test_hard_texts_are_tokenized_exactly(vocab: Any, exact: ExactTokenizer, text: str) -> None:
    data = text.encode()
    out = exact.tokenize(vocab, data)
    assert vocab.detokenize(out.tokens, special=False) == data


def test_every_server_source_file_is_tokenized_exactly(vocab: Any, exact: ExactTokenizer) -> None:
    files = subprocess.run(
        ["git", "ls-files", "server/*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(files) > 30
    piecewise = 0
    for name in files:
        data = (ROOT / name).read_bytes()
        out = exact.tokenize(vocab, data)
        assert vocab.detokenize(out.tokens, special=False) == data, name
        piecewise += out.piecewise_bytes
    assert piecewise > 0  # some files hold runs the tokenizer alone cannot reproduce


def test_a_byte_without_a_token_is_named(vocab: Any, exact: ExactTokenizer) -> None:
    """Without escapes (SEMANTIC's coded bodies, which then pack with brotli)."""
    with pytest.raises(Unrepresentable, match=r"byte 0x04 at offset 5"):
        exact.tokenize(vocab, b"start\x04end")


def test_a_byte_without_a_token_is_escaped(vocab: Any, exact: ExactTokenizer) -> None:
    """Every byte the vocabulary lacks that valid UTF-8 can hold, escaped and put back."""
    lacking = "".join(chr(b) for b in sorted(MISSING) if b < 0x80) + "\U00040000\U000bfffd"
    data = f"a{lacking}b\x04\x04c".encode()
    out = exact.tokenize(vocab, data, escapes=True)
    assert out.escapes
    coded = vocab.detokenize(out.tokens, special=False)
    assert coded != data and len(coded) == len(data)
    assert coded.decode("utf-8")  # the stand-ins keep the text UTF-8
    assert unescape(coded, out.escapes) == data


def test_escapes_are_small_and_checked() -> None:
    missing = frozenset(MISSING)
    data = b"x" * 300 + b"\x04" + b"y\x06"
    escaped, table = escape(data, missing)
    assert table == bytes([0xAC, 0x02, 0x04, 0x01, 0x06])  # gap 300 as a varint, gap 1
    assert unescape(escaped, table) == data
    assert escape(b"plain text", missing) == (b"plain text", b"")
    with pytest.raises(DataLoss, match="do not fit"):
        unescape(escaped[:250], table)
    with pytest.raises(DataLoss, match="malformed"):
        unescape(escaped, b"\xff\xff")


WHITESPACE = [" ", "\t", "\n", "\r\n", "\u3000", "\xa0", "-", "#"]
LACKING = ["\x04", "\x06", "\x13", "\x14", "\x16", "\x1d", "\U00040000", "\U000a1234"]
segments = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(LACKING),
    st.builds(lambda ch, n: ch * n, st.sampled_from(WHITESPACE), st.integers(1, 120)),
)
texts = st.lists(segments, max_size=12).map("".join)


def test_random_unicode_with_runs_is_always_exact(vocab: Any, exact: ExactTokenizer) -> None:
    """Any text comes back exactly, bytes no token reproduces included (escaped); the
    examples include texts the tokenizer alone does not reproduce, and texts with bytes
    the vocabulary lacks (both counted)."""
    tokenizer_failed: list[str] = []
    escaped: list[str] = []

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(texts)
    @example("\n" + " " * 48 + "x")
    def check(text: str) -> None:
        data = text.encode()
        if not canonical_round_trips(vocab, data):
            tokenizer_failed.append(text)
        out = exact.tokenize(vocab, data, escapes=True)
        if out.escapes:
            escaped.append(text)
        assert bool(out.escapes) == bool(MISSING & set(data))
        assert unescape(vocab.detokenize(out.tokens, special=False), out.escapes) == data
        assert out.piecewise_bytes <= len(data)

    check()
    assert len(tokenizer_failed) >= 10
    assert len(escaped) >= 10


# ---- through the real server and model ------------------------------------------------

MODEL_TEXTS = {
    "alice29-slice": alice_slice().decode(),
    "space-tab-runs": "Name:" + " " * 60 + "Alice\n" + "\t" * 40 + "Rabbit\n" + " " * 33 + "end",
    "crlf": "Down the Rabbit-Hole\r\n\r\nAlice was beginning to get very tired\r\nof sitting.\r\n",
    "control-chars": "log \x00\x1b[1mbold\x1b[0m\x0cpage two\x07\x1b[2J done",
    "marks-emoji-rtl": (
        "Cafe\u0301 na\u0308ive \u05e9\u05dc\u05d5\u05dd \U0001f389\U0001f469\u200d\U0001f467 "
        "\u202eabc\u202c"
    ),
    "source-file": (ROOT / "server/llmcompress_server/codecs/lossless.py").read_text()[:600],
}


async def _compress(stub: pb_grpc.CompressionServiceStub, text: str) -> pb.CompressResponse:
    return await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_LOSSLESS, verify=True))


@pytest.mark.model
async def test_hard_texts_round_trip_losslessly_with_no_fallback(
    start_server: StartServer, vocab: Any
) -> None:
    """Each text is LOSSLESS (never ZSTD), verified, and reconstructs exactly. The body
    holds the same fields as any LOSSLESS body (the format has nothing new), and its
    decoded tokens alone, detokenized, give the text (the decoder has nothing new)."""
    app = await start_server()
    codec = app.pipeline.codecs[Mode.LOSSLESS]
    assert isinstance(codec, LosslessCodec)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        for name, text in MODEL_TEXTS.items():
            resp = await _compress(stub, text)
            assert resp.stats.mode == pb.MODE_LOSSLESS, (name, resp.stats.reason)
            assert not resp.stats.degraded, name
            env = pb.Envelope.FromString(resp.envelope)
            fields = {f.name for f, _ in env.lossless.ListFields()}
            assert fields <= {"fingerprint", "stream", "n_tokens", "chunk_words"}, name
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
            assert back.exact and back.text == text, name
            tokens = await codec.decode_tokens(env.lossless, env.original_length)
            assert vocab.detokenize(tokens, special=False) == text.encode(), name
            if name in ("alice29-slice", "space-tab-runs"):
                assert not canonical_round_trips(vocab, text.encode()), name
                assert 0 < resp.stats.piecewise_bytes < len(text.encode()), name


@pytest.mark.model
async def test_a_text_with_bytes_no_token_holds_is_lossless_with_escapes(
    start_server: StartServer,
) -> None:
    """Control bytes and a plane-4 character the vocabulary lacks: LOSSLESS, not ZSTD; the
    body's escapes put them back; a body whose escapes are cut is DATA_LOSS."""
    app = await start_server()
    text = "ack\x06 and eot\x04 are not in the vocabulary, nor is \U00040001; the rest is"
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        resp = await _compress(stub, text)
        assert resp.stats.mode == pb.MODE_LOSSLESS and not resp.stats.degraded
        env = pb.Envelope.FromString(resp.envelope)
        assert len(env.lossless.escapes) == 2 * 3  # three bytes, each a one-byte gap + byte
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
        assert back.exact and back.text == text
        env.lossless.escapes = env.lossless.escapes[:2]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Reconstruct(pb.ReconstructRequest(envelope=env.SerializeToString()))
        assert err.value.code() == grpc.StatusCode.DATA_LOSS


@pytest.mark.model
async def test_semantic_coded_bodies_take_the_same_path() -> None:
    """A summary the tokenizer alone cannot reproduce is still model-coded, and decodes."""
    engine = EmbeddedEngine(make_config().model.embedded)
    codec = LosslessCodec(engine)
    try:
        await engine.start()
        summary = "Facts:\n" + " " * 50 + "Alice, the Rabbit\n\t\t\tand the Queen"
        coded = await summary_coding.code_prefixes(codec, [summary], limit=1 << 20)
        assert coded is not None and coded.piecewise[0] > 0
        whole = coded.prefixes[-1]
        body = pb.LosslessBody(
            fingerprint=coded.fingerprint, stream=whole.stream, n_tokens=whole.tokens
        )
        env = pb.Envelope(
            mode=pb.MODE_SEMANTIC,
            model=engine.identity.to_pb(),
            original_length=len(summary.encode()),
            semantic=pb.SemanticBody(coded=body),
        )
        assert await summary_coding.decode_text(codec, env) == summary
    finally:
        await engine.close()
