"""ZSTD mode: an exact zstd frame, the seed's "simple compression" and the last fallback."""

from __future__ import annotations

import asyncio
import functools
import threading

import zstandard

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.dictionary import Dictionary
from ..core.envelope import is_compact
from ..core.errors import DataLoss
from ..telemetry.stages import StageClock
from . import INLINE_BYTES, CompressOptions, Decoded, Encoded

# Compressors a thread keeps (one per level and dictionary in use); a dictionary's holds
# its digested tables, so a stream of items reuses them.
_COMPRESSORS_PER_THREAD = 16


def _params(level: int) -> zstandard.ZstdCompressionParameters:
    # Envelope format 4: the frame carries the length and checksum the envelope no longer
    # does, and drops the 4-byte magic the envelope's version stands for (and the
    # dictionary id, which the envelope holds).
    return zstandard.ZstdCompressionParameters.from_level(
        level,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_content_size=True,
        write_checksum=True,
        write_dict_id=False,
    )


@functools.lru_cache(maxsize=32)
def _zstd_dict(zstd: bytes, level: int | None = None) -> zstandard.ZstdCompressionDict:
    """The trained dictionary, digested once: for `level` when compressing, and (None) for
    decompressing, where zstandard keeps the digest on the object at its first frame.
    A new object per frame would digest its ~110 KB every time (18 against 10 µs a frame
    on the changelog items)."""
    trained = zstandard.ZstdCompressionDict(zstd)
    if level is not None:
        trained.precompute_compress(compression_params=_params(level))
    return trained


class ZstdCodec:
    """MODE_ZSTD: a zstd frame, exact, no model; `small_level` up to `small_bytes`, `level`
    above (where the high levels cost many times the CPU for a percent or two). With a
    corpus dictionary, the frame is coded against its trained zstd dictionary, and up to
    `small_bytes` at `dictionary_small_level` (matching against the dictionary is what
    costs there: levels 18-19 take half as long again as 17 for a quarter of a percent)."""

    mode = pb.MODE_ZSTD
    # Bump when the frame for the same text and level changes (cache keys include it).
    # 2: magicless frames with their content size and checksum (envelope format 4).
    version = 2

    def __init__(
        self,
        level: int = 6,
        small_level: int = 19,
        small_bytes: int = 512,
        dictionary_small_level: int = 17,
    ) -> None:
        self.level = level
        self.small_level = small_level
        self.small_bytes = small_bytes
        self.dictionary_small_level = dictionary_small_level
        # zstd contexts are not thread-safe; keep one per thread and level.
        self._local = threading.local()

    def cache_params(self, opts: CompressOptions) -> dict[str, str | int | float | bool]:
        """What shapes the frame: no model, no per-request option, only the levels."""
        return {
            "codec": "zstd",
            "version": self.version,
            "level": self.level,
            "small_level": self.small_level,
            "small_bytes": self.small_bytes,
            "dictionary_small_level": self.dictionary_small_level,
        }

    def _compressor(self, level: int, dictionary: Dictionary | None) -> zstandard.ZstdCompressor:
        cache: dict[tuple[int, bytes], zstandard.ZstdCompressor] | None = getattr(
            self._local, "comps", None
        )
        if cache is None:
            cache = self._local.comps = {}
        key = (level, dictionary.id if dictionary is not None else b"")
        comp = cache.get(key)
        if comp is None:
            params = _params(level)
            if dictionary is None:
                comp = zstandard.ZstdCompressor(compression_params=params)
            else:
                trained = _zstd_dict(dictionary.zstd, level)
                comp = zstandard.ZstdCompressor(dict_data=trained, compression_params=params)
            if len(cache) >= _COMPRESSORS_PER_THREAD:
                cache.pop(next(iter(cache)))
            cache[key] = comp
        return comp

    def level_for(self, size: int, dictionary: bool) -> int:
        """The level a text of `size` bytes is coded at, with a dictionary or without."""
        if size > self.small_bytes:
            return self.level
        return self.dictionary_small_level if dictionary else self.small_level

    def compress_bytes(self, data: bytes, dictionary: Dictionary | None = None) -> bytes:
        level = self.level_for(len(data), dictionary is not None)
        return self._compressor(level, dictionary).compress(data)

    @staticmethod
    def decompress_bytes(
        frame: bytes, length: int, compact: bool = True, dictionary: Dictionary | None = None
    ) -> bytes:
        """`compact`: a format-4 frame (magicless, its own size and checksum)."""
        try:
            fmt = zstandard.FORMAT_ZSTD1_MAGICLESS if compact else zstandard.FORMAT_ZSTD1
            if dictionary is not None:
                trained = _zstd_dict(dictionary.zstd)
                out = zstandard.ZstdDecompressor(dict_data=trained, format=fmt)
            else:
                out = zstandard.ZstdDecompressor(format=fmt)
            return out.decompress(frame, max_output_size=max(length, 1))
        except zstandard.ZstdError as exc:
            raise DataLoss(
                f"the zstd frame in the envelope is corrupt ({exc}); restore it from a good copy"
            ) from None

    def frame_now(
        self, data: bytes, dictionary: Dictionary | None = None
    ) -> tuple[bytes, Dictionary | None]:
        """The frame for `data`, in this thread (cheap below INLINE_BYTES), and the corpus
        dictionary it was coded with (None when `dictionary` has no zstd part)."""
        used = dictionary if dictionary is not None and dictionary.zstd else None
        return self.compress_bytes(data, used), used

    def encode_now(self, data: bytes, dictionary: Dictionary | None = None) -> Encoded:
        """The envelope body for `data`, in this thread (cheap below INLINE_BYTES)."""
        frame, used = self.frame_now(data, dictionary)
        return Encoded(
            envelope=pb.Envelope(mode=pb.MODE_ZSTD, zstd=pb.ZstdBody(frame=frame)),
            dictionary=used,
        )

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        data = text.encode("utf-8")
        with clock.stage("zstd.encode", **{"llmc.bytes": len(data)}):
            if len(data) <= INLINE_BYTES:
                return self.encode_now(data, opts.dictionary)
            return await asyncio.to_thread(self.encode_now, data, opts.dictionary)

    async def decode(
        self, env: pb.Envelope, clock: StageClock, dictionary: Dictionary | None = None
    ) -> Decoded:
        with clock.stage("zstd.decode"):
            length, compact = env.original_length, is_compact(env)
            if length == 0 and not env.zstd.frame:
                return Decoded(text="", exact=True)
            args = (env.zstd.frame, length, compact, dictionary)
            if length <= INLINE_BYTES:
                data = self.decompress_bytes(*args)
            else:
                data = await asyncio.to_thread(self.decompress_bytes, *args)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataLoss(
                "the envelope decodes to bytes that are not UTF-8: it is corrupted"
            ) from None
        return Decoded(text=text, exact=True)
