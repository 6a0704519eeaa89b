"""ZSTD mode: an exact zstd frame, the seed's "simple compression" and the last fallback."""

from __future__ import annotations

import asyncio
import threading

import zstandard

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.errors import DataLoss
from ..telemetry.stages import StageClock
from . import CompressOptions, Decoded, Encoded

# Below this, compressing inline is cheaper than a hop to a thread.
_INLINE_BYTES = 32 * 1024


class ZstdCodec:
    """MODE_ZSTD: a zstd frame at `level`, exact, no model."""

    mode = pb.MODE_ZSTD
    # Bump when the frame for the same text and level changes (cache keys include it).
    version = 1

    def __init__(self, level: int = 19) -> None:
        self.level = level
        # zstd contexts are not thread-safe; keep one per thread.
        self._local = threading.local()

    def cache_params(self, opts: CompressOptions) -> dict[str, str | int | float | bool]:
        """What shapes the frame: no model, no per-request option, only the level."""
        return {"codec": "zstd", "version": self.version, "level": self.level}

    def _compressor(self) -> zstandard.ZstdCompressor:
        comp: zstandard.ZstdCompressor | None = getattr(self._local, "comp", None)
        if comp is None:
            # The envelope already stores the length and a hash, so the frame
            # omits its own content size, checksum and dictionary id.
            comp = zstandard.ZstdCompressor(
                level=self.level,
                write_content_size=False,
                write_checksum=False,
                write_dict_id=False,
            )
            self._local.comp = comp
        return comp

    def compress_bytes(self, data: bytes) -> bytes:
        return self._compressor().compress(data)

    @staticmethod
    def decompress_bytes(frame: bytes, length: int) -> bytes:
        try:
            return zstandard.ZstdDecompressor().decompress(frame, max_output_size=max(length, 1))
        except zstandard.ZstdError as exc:
            raise DataLoss(
                f"the zstd frame in the envelope is corrupt ({exc}); restore it from a good copy"
            ) from None

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        data = text.encode("utf-8")
        with clock.stage("zstd.encode", **{"llmc.bytes": len(data)}):
            if len(data) <= _INLINE_BYTES:
                frame = self.compress_bytes(data)
            else:
                frame = await asyncio.to_thread(self.compress_bytes, data)
        return Encoded(envelope=pb.Envelope(mode=pb.MODE_ZSTD, zstd=pb.ZstdBody(frame=frame)))

    async def decode(self, env: pb.Envelope, clock: StageClock) -> Decoded:
        with clock.stage("zstd.decode"):
            length = env.original_length
            if length == 0 and not env.zstd.frame:
                return Decoded(text="", exact=True)
            if length <= _INLINE_BYTES:
                data = self.decompress_bytes(env.zstd.frame, length)
            else:
                data = await asyncio.to_thread(self.decompress_bytes, env.zstd.frame, length)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataLoss(
                "the envelope decodes to bytes that are not UTF-8: it is corrupted"
            ) from None
        return Decoded(text=text, exact=True)
