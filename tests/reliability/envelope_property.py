"""The decoder property both fuzzers check, and the real envelopes they start from.

`check(loop, data)`: `Pipeline.reconstruct(data)` gives an exact text whose
length and hash match the header, or raises InvalidInput / DataLoss /
PreconditionFailed with a message, within 5 s. Anything else is a bug.
"""

from __future__ import annotations

import asyncio

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.codecs.zstd import ZstdCodec
from llmcompress_server.domain import Mode
from llmcompress_server.envelope import seal, text_hash
from llmcompress_server.errors import DataLoss, InvalidInput, PreconditionFailed
from llmcompress_server.pipeline import Pipeline

from ..conftest import load_corpus, make_config

ALLOWED = (InvalidInput, DataLoss, PreconditionFailed)
MAX_TEXT = 64 * 1024  # claimed lengths above this are refused before decoding

PIPELINE = Pipeline(
    make_config(compression={"max_text_bytes": MAX_TEXT}), {Mode.ZSTD: ZstdCodec(19)}
)


def _seal(text: str) -> bytes:
    # The same bytes Compress would return for ZSTD, without an event loop at import.
    data = text.encode("utf-8")
    frame = ZstdCodec(19).compress_bytes(data)
    return seal(data, pb.Envelope(mode=pb.MODE_ZSTD, zstd=pb.ZstdBody(frame=frame)))


_corpus = load_corpus()
SEEDS = [
    _seal(t)
    for t in (
        "",
        "a",
        "héllo wörld 🙂 " * 3,
        "\x00\x01 binary-ish \x7f",
        _corpus[0]["text"],
        _corpus[7]["text"],
        " ".join(item["text"] for item in _corpus[:12])[:40_000],  # the threaded decode path
    )
]
FRAMES = [pb.Envelope.FromString(s).zstd.frame for s in SEEDS]


def check(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    """The property: an exact text, or one of the documented errors, within 5 s."""
    try:
        out = loop.run_until_complete(asyncio.wait_for(PIPELINE.reconstruct(data), 5.0))
    except ALLOWED as exc:
        assert str(exc), "errors carry a message a person can act on"
        return
    assert out.exact and isinstance(out.text, str)
    env = pb.Envelope.FromString(data)
    encoded = out.text.encode("utf-8")
    assert len(encoded) == env.original_length and text_hash(encoded) == env.original_hash
