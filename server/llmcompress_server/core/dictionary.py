"""A corpus dictionary's contents: what coding with it needs, and its content address.

A dictionary is immutable. Its id is the SHA-256 of its contents (a fixed byte
layout, so any language can recompute it); an envelope coded with it stores the
first 4 bytes (`Envelope.dictionary`). Names, sample counts and creation times
are metadata kept beside it (`flow/dictionaries.py`), not part of the id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# The id covers this tag, so a later layout of the contents can never collide with this one.
_ID_TAG = b"llmcompress dictionary v1\n"


@dataclass(frozen=True)
class Dictionary:
    """`zstd`: a trained zstd dictionary (b"" for none). `primer`: text the model reads
    before each LOSSLESS or model-coded SEMANTIC text ("" for none)."""

    zstd: bytes = b""
    primer: str = ""
    id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", content_id(self.zstd, self.primer))

    @property
    def hex(self) -> str:
        return self.id.hex()

    @property
    def short_id(self) -> int:
        """What an envelope stores: the id's first 4 bytes, big-endian."""
        return short_of(self.id)


def content_id(zstd: bytes, primer: str) -> bytes:
    """SHA-256 of the tag, the zstd dictionary's length (4 bytes, big-endian), the zstd
    dictionary and the primer's UTF-8."""
    digest = hashlib.sha256(_ID_TAG)
    digest.update(len(zstd).to_bytes(4, "big"))
    digest.update(zstd)
    digest.update(primer.encode("utf-8"))
    return digest.digest()


def short_of(dictionary_id: bytes) -> int:
    return int.from_bytes(dictionary_id[:4], "big")
