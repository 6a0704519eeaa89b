"""Cache entries: a sealed envelope plus how it was made, checked against key and text on read."""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass

from llmcompress_proto.v1 import compression_pb2 as pb

from ...core.domain import Mode
from ...core.envelope import describes, model_name, open_envelope
from ...core.errors import LLMCompressError

_ENTRY_MAGIC = b"LCE1"
_META_LEN = struct.Struct(">I")
_KEY_BYTES = 32
# Magic, key, metadata length and its JSON keys: a packed entry's bytes beside its fields.
_ENTRY_OVERHEAD = 120


class CorruptEntry(ValueError):
    """A stored value is not an entry for this key and text; treat as a miss."""


@dataclass(frozen=True)
class CachedResult:
    """What a hit must give back: the envelope plus how it was made."""

    envelope: bytes
    # Read from the envelope itself on unpack, so a hit reports what it holds.
    mode: Mode
    model: str = ""
    backend: str = ""
    degraded: bool = False
    reason: str = ""
    quality: pb.QualityScores | None = None
    piecewise_bytes: int = 0
    # The short id of the corpus dictionary the envelope names, as 8 hex digits ("" none).
    dictionary: str = ""

    @property
    def stored_bytes(self) -> int:
        """About what the entry takes packed (the memory tier's byte bound counts this)."""
        quality = 0 if self.quality is None else 4 * self.quality.ByteSize() // 3
        return _ENTRY_OVERHEAD + len(self.envelope) + len(self.backend) + len(self.reason) + quality

    def pack(self, key: bytes) -> bytes:
        meta = {
            "backend": self.backend,
            "piecewise_bytes": self.piecewise_bytes,
            "degraded": self.degraded,
            "reason": self.reason,
            "quality": base64.b64encode(self.quality.SerializeToString()).decode("ascii")
            if self.quality is not None
            else None,
        }
        raw = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        return b"".join((_ENTRY_MAGIC, key, _META_LEN.pack(len(raw)), raw, self.envelope))

    @classmethod
    def unpack(cls, key: bytes, value: bytes, data: bytes) -> CachedResult:
        """Parse and check an entry: its key, its envelope header, and the text it holds."""
        head = len(_ENTRY_MAGIC) + _KEY_BYTES
        if len(value) < head + _META_LEN.size or not value.startswith(_ENTRY_MAGIC):
            raise CorruptEntry("not a cache entry")
        if value[len(_ENTRY_MAGIC) : head] != key:
            raise CorruptEntry("entry stored under another key")
        (meta_len,) = _META_LEN.unpack_from(value, head)
        body = head + _META_LEN.size
        try:
            meta = json.loads(value[body : body + meta_len])
            envelope = value[body + meta_len :]
            env = open_envelope(envelope)
            quality = None
            if meta["quality"] is not None:
                quality = pb.QualityScores.FromString(base64.b64decode(meta["quality"]))
            result = cls(
                envelope=envelope,
                mode=Mode.from_pb(env.mode),
                model=model_name(env.model),
                backend=str(meta["backend"]),
                degraded=bool(meta["degraded"]),
                reason=str(meta["reason"]),
                quality=quality,
                # Entries written before the field existed had no piecewise coding.
                piecewise_bytes=int(meta.get("piecewise_bytes", 0)),
                dictionary=f"{env.dictionary:08x}" if env.dictionary else "",
            )
        except (ValueError, KeyError, TypeError, LLMCompressError) as exc:
            raise CorruptEntry(f"unreadable entry: {exc}") from None
        if not describes(env, data):
            raise CorruptEntry("entry holds an envelope of another text")
        return result
