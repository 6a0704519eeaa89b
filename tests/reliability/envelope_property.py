"""The decoder property every fuzzer checks, and the real envelopes they start from.

`check(loop, data, pipeline)`: `pipeline.reconstruct(data)` gives a text, exact ones
matching the header's length and hash, or raises one of the documented errors
(`ALLOWED`: INVALID_ARGUMENT, DATA_LOSS, FAILED_PRECONDITION, and UNAVAILABLE when a
model backend cannot answer) with a message. Anything else is a bug: an exception
the service would turn into INTERNAL, or a wrong text marked exact. Two pipelines:
`PIPELINE` holds only ZSTD (fast, for 100,000 inputs); `model_pipeline()` the real
LOSSLESS and SEMANTIC codecs on the embedded model (codec_property.py).
"""

from __future__ import annotations

import asyncio

from llmcompress.v1 import compression_pb2 as pb
from llmcompress_server.codecs.zstd import ZstdCodec
from llmcompress_server.core.domain import Mode
from llmcompress_server.core.envelope import describes, open_envelope, seal
from llmcompress_server.core.errors import BackendError, DataLoss, InvalidInput, PreconditionFailed
from llmcompress_server.flow.pipeline import Pipeline

from ..conftest import load_corpus, make_config

ALLOWED = (InvalidInput, DataLoss, PreconditionFailed, BackendError)
MAX_TEXT = 64 * 1024  # claimed lengths above this are refused before decoding
# A hang detector, not a speed bound: a ZSTD envelope of MAX_TEXT decodes in
# milliseconds; the model pipeline sets its own (its work is bounded by the
# envelope's size, see coding/rows.py `StreamDecoder`).
ZSTD_WITHIN = 60.0

PIPELINE = Pipeline(
    make_config(compression={"max_text_bytes": MAX_TEXT}), {Mode.ZSTD: ZstdCodec(19)}
)


def seal_zstd(text: str) -> bytes:
    # The same bytes Compress would return for ZSTD, without an event loop at import.
    data = text.encode("utf-8")
    frame = ZstdCodec(19).compress_bytes(data)
    return seal(data, pb.Envelope(mode=pb.MODE_ZSTD, zstd=pb.ZstdBody(frame=frame)))


_corpus = load_corpus()
SEEDS = [
    seal_zstd(t)
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


def check(
    loop: asyncio.AbstractEventLoop,
    data: bytes,
    pipeline: Pipeline = PIPELINE,
    within: float = ZSTD_WITHIN,
) -> str:
    """The property; returns what happened ("exact", "lossy" or the error's class name)."""
    try:
        out = loop.run_until_complete(asyncio.wait_for(pipeline.reconstruct(data), within))
    except ALLOWED as exc:
        assert str(exc), "errors carry a message a person can act on"
        return type(exc).__name__
    assert isinstance(out.text, str)
    if not out.exact:
        # Only SEMANTIC gives text back without promising it is the original.
        assert pb.Envelope.FromString(data).mode == pb.MODE_SEMANTIC
        return "lossy"
    # The header's length and hash stand for the original; in a compact ZSTD envelope the
    # frame's size and checksum do (open_envelope refuses a frame that lacks either).
    assert describes(open_envelope(data), out.text.encode("utf-8"))
    return "exact"
