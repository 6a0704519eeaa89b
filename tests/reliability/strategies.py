"""Hypothesis strategies for envelopes: raw bytes, mutations of real envelopes (truncate,
flip, splice, edit a header or body field, swap a body) and envelopes built field by field."""

from __future__ import annotations

import zstandard
from hypothesis import strategies as st

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.core.envelope import FORMAT_VERSION, MAGIC, text_hash

_u64 = st.integers(0, 2**64 - 1)
_u32 = st.integers(0, 2**32 - 1)
# Field edits keep the protobuf whole, so they reach the decoders; byte edits mostly
# stop at parsing. Half of the edits are field edits.
_OPS = ["truncate", "flip", "set", "insert", "delete", "splice", *["field"] * 6]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_text: int, deep: bool = False) -> bytes:
    """A real envelope with 1-3 byte-level or field-level edits; `deep`: field edits of
    the body and the fields decoding checks against only (they get past the header)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        op = "field" if deep else draw(st.sampled_from(_OPS))
        n = len(data)
        if op == "truncate":
            data = data[: draw(st.integers(0, n))]
        elif op == "flip" and n:
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data = data[: draw(st.integers(0, n))] + other[draw(st.integers(0, len(other))) :]
        elif op == "field":
            data = bytearray(draw(_edit_field(bytes(data), seeds, max_text, deep)))
    return bytes(data)


def _flip(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3)) if out else 0):
        out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@st.composite
def _edit_field(
    draw: st.DrawFn, data: bytes, seeds: list[bytes], max_text: int, deep: bool = False
) -> bytes:
    env = pb.Envelope()
    try:
        env.ParseFromString(data)
    except Exception:
        return data  # not parseable any more: byte edits only
    names = ["length", "hash", "body"]
    if not deep:
        names += ["magic", "version", "mode", "model"]
    body = env.WhichOneof("body")
    if body == "lossless":
        names += ["coded"] * 3 + ["fingerprint"]
    elif body == "semantic":
        names += ["semantic"] * 3 + ["coded"] * 2 + ["fingerprint"]
    elif body == "zstd":
        names += ["frame"]
    name = draw(st.sampled_from(names))
    coded = env.semantic.coded if body == "semantic" else env.lossless
    if name == "magic":
        env.magic = draw(st.one_of(st.just(MAGIC ^ 1), _u32))
    elif name == "version":
        env.version = draw(st.integers(0, FORMAT_VERSION + 2) | _u32)
    elif name == "mode":
        env.mode = draw(st.integers(-2, 8))  # type: ignore[assignment]
    elif name == "length":
        env.original_length = draw(
            st.integers(0, max_text + 2) | st.just((env.original_length + 1) % 2**64) | _u64
        )
    elif name == "hash":
        env.original_hash = draw(_u64)
    elif name == "body":
        # Another seed's body (of any mode) under this header, or a made-up one.
        other = pb.Envelope.FromString(draw(st.sampled_from(seeds)))
        kind = draw(st.sampled_from(["seed", "zstd", "frame", "lossless", "semantic", "none"]))
        if kind == "seed" and other.WhichOneof("body"):
            field = other.WhichOneof("body")
            getattr(env, field).CopyFrom(getattr(other, field))
        elif kind == "zstd":
            env.zstd.frame = draw(st.binary(max_size=64))
        elif kind == "frame":
            env.zstd.frame = zstandard.ZstdCompressor().compress(draw(st.binary(max_size=256)))
        elif kind == "lossless":
            env.lossless.stream = draw(st.binary(max_size=64))
        elif kind == "semantic":
            env.semantic.summary = draw(st.text(max_size=32))
        else:
            env.ClearField(env.WhichOneof("body") or "zstd")
    elif name == "model":
        env.model.name = draw(st.text(max_size=16))
        env.model.sha256_prefix = draw(_u64)
        env.model.known = draw(st.integers(0, 3) | _u32)
    elif name == "frame":
        env.zstd.frame = _flip(draw, env.zstd.frame)
    elif name == "coded":
        edit = draw(st.sampled_from(["n_tokens", "stream", "flip", "flip", "chunks"]))
        if edit == "n_tokens":
            coded.n_tokens = draw(
                st.integers(0, 4 * max_text)
                | st.sampled_from([coded.n_tokens + 1, max(0, coded.n_tokens - 1)])
            )
        elif edit == "stream":
            coded.stream = draw(st.binary(max_size=256))
        elif edit == "flip":
            coded.stream = _flip(draw, coded.stream)
        else:
            coded.chunk_words[:] = draw(st.lists(st.integers(0, 64), max_size=4))
    elif name == "fingerprint":
        fp = coded.fingerprint
        edit = draw(st.sampled_from(["threads", "schedule", "n_ctx", "versions", "cpu", "build"]))
        if edit == "threads":
            fp.threads = draw(st.integers(0, 64))
        elif edit == "schedule":
            fp.schedule_id = draw(st.integers(0, 4))
        elif edit == "n_ctx":
            fp.n_ctx = draw(st.integers(0, 1 << 20))
        elif edit == "versions":
            fp.versions[:] = draw(st.lists(st.integers(0, 2**32 - 1), max_size=4))
        elif edit == "build":
            fp.build = draw(_u32)
        else:
            fp.cpu_features = draw(_u64)
    else:  # a SEMANTIC body's own fields
        sem = env.semantic
        edit = draw(st.sampled_from(["summary", "facts", "packed", "flip", "extractive"]))
        if edit == "summary":
            sem.summary = draw(st.text(max_size=400))
        elif edit == "facts":
            sem.facts.add(kind=draw(st.text(max_size=8)), text=draw(st.text(max_size=24)))
        elif edit == "packed":
            sem.packed = draw(st.binary(max_size=64))
        elif edit == "flip":
            sem.packed = _flip(draw, sem.packed)
        else:
            sem.extractive = not sem.extractive
    return env.SerializeToString()


@st.composite
def built(draw: st.DrawFn, max_text: int) -> bytes:
    """A ZSTD envelope made field by field; the checksum right about half the time."""
    payload = draw(st.binary(max_size=512))
    right = draw(st.booleans())
    env = pb.Envelope(
        magic=draw(st.just(MAGIC) | _u32),
        version=draw(st.integers(0, FORMAT_VERSION + 1)),
        mode=draw(st.sampled_from([pb.MODE_ZSTD, pb.MODE_ZSTD, pb.MODE_LOSSLESS, 0, 9])),
        original_length=len(payload) if right else draw(st.integers(0, 2 * max_text) | _u64),
        original_hash=text_hash(payload) if right else draw(_u64),
    )
    # Frames of formats 1-3 (with the magic number) and 4 (magicless), with or without
    # their own size and checksum, whatever the envelope's version says.
    params = zstandard.ZstdCompressionParameters.from_level(
        draw(st.integers(1, 5)),
        format=draw(st.sampled_from([zstandard.FORMAT_ZSTD1, zstandard.FORMAT_ZSTD1_MAGICLESS])),
        write_content_size=draw(st.booleans()),
        write_checksum=draw(st.booleans()),
    )
    frame = zstandard.ZstdCompressor(compression_params=params).compress(payload)
    env.zstd.frame = draw(st.just(frame) | st.binary(max_size=64))
    return env.SerializeToString()


def envelopes(seeds: list[bytes], max_text: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutated(seeds, max_text), built(max_text))
