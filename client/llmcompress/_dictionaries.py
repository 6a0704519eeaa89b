"""Corpus dictionaries as the client sees them: their description, and training requests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from llmcompress_proto.v1 import compression_pb2 as pb

# Samples per TrainDictionary message stay under this many bytes (far below gRPC's 4 MiB
# default message limit, so a server with any sane limit takes them).
TRAIN_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class DictionaryInfo:
    """A stored corpus dictionary: its name, id (SHA-256 of its contents, hex; envelopes
    store the first 8 digits), sizes, the samples it was trained on, and the names that
    point at it now."""

    name: str
    id: str
    zstd_bytes: int
    primer_bytes: int
    samples: int
    sample_bytes: int
    created_unix: float
    training_seconds: float
    names: tuple[str, ...] = ()

    @classmethod
    def from_pb(cls, info: pb.DictionaryInfo) -> DictionaryInfo:
        return cls(
            name=info.name,
            id=info.id,
            zstd_bytes=info.zstd_bytes,
            primer_bytes=info.primer_bytes,
            samples=info.samples,
            sample_bytes=info.sample_bytes,
            created_unix=info.created_unix,
            training_seconds=info.training_seconds,
            names=tuple(info.names),
        )


def training_requests(
    name: str,
    samples: Iterable[str],
    zstd_bytes: int = 0,
    on_sample: Callable[[int], None] | None = None,
) -> Iterator[pb.TrainDictionaryRequest]:
    """A TrainDictionary stream: the name first, then samples in messages of about
    TRAIN_MESSAGE_BYTES; `on_sample(bytes)` is called as each sample is queued."""
    first = True
    batch: list[str] = []
    size = 0
    for text in samples:
        n = len(text.encode("utf-8"))
        if batch and size + n > TRAIN_MESSAGE_BYTES:
            yield _request(name, batch, zstd_bytes, first)
            first, batch, size = False, [], 0
        batch.append(text)
        size += n
        if on_sample is not None:
            on_sample(n)
    if batch or first:
        yield _request(name, batch, zstd_bytes, first)


def _request(
    name: str, batch: list[str], zstd_bytes: int, first: bool
) -> pb.TrainDictionaryRequest:
    if first:
        return pb.TrainDictionaryRequest(name=name, samples=batch, zstd_bytes=zstd_bytes)
    return pb.TrainDictionaryRequest(samples=batch)
