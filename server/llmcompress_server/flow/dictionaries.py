"""Corpus dictionaries as stored objects: trained, imported, exported, listed, deleted.

A dictionary (core/dictionary.py) is immutable and named by the SHA-256 of its
contents; a name points at the latest dictionary stored under it. Each is kept
as one self-checking file (`DictionaryFile`, the export format) under
`dictionaries.path`, written to a temporary name, synced and renamed, so a
process killed mid-write leaves either the whole file or none; with
`cache.redis_url` set it is also kept in that Redis, so replicas share it. A
file whose contents do not hash to its id is refused (DATA_LOSS) and never
listed. Nothing is deleted except by `delete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard
from google.protobuf.message import DecodeError

from llmcompress_proto.v1 import compression_pb2 as pb

from ..core.config import DictionariesConfig
from ..core.dictionary import Dictionary, content_id
from ..core.errors import (
    DataLoss,
    InvalidInput,
    LLMCompressError,
    NotFound,
    PreconditionFailed,
    SharedStoreDown,
)
from ..core.events import Events

log = logging.getLogger(__name__)

FILE_FORMAT = 1
SUFFIX = ".llmcd"
# A name is also a file name under `names/`: no leading dot ("..", hidden files).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
# An id given instead of a name: at least the 8 hex digits an envelope stores.
_ID_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")
# How long a replica trusts its memory of where a name points before asking Redis again:
# a name re-pointed on another replica is seen within this time.
NAME_TTL_SECONDS = 2.0
# Training reads at most this many times the dictionary's size of samples (zstd's guide:
# about 100x; more only slows training). Which samples is fixed by a seeded shuffle.
_TRAINING_FACTOR = 100
_REDIS_FILES = "llmc:dictionaries"
_REDIS_NAMES = "llmc:dictionary-names"

# (samples, token budget) -> the primer text; the LOSSLESS codec's, when the server has one.
ChoosePrimer = Callable[[Sequence[str], int], Awaitable[str]]


@dataclass(frozen=True)
class StoredDictionary:
    """A dictionary and what is known of it besides its contents."""

    dictionary: Dictionary
    name: str
    samples: int = 0
    sample_bytes: int = 0
    created_unix: float = 0.0
    training_seconds: float = 0.0

    @property
    def hex(self) -> str:
        return self.dictionary.hex

    def to_file(self) -> bytes:
        d = self.dictionary
        return pb.DictionaryFile(
            format=FILE_FORMAT,
            id=d.id,
            zstd=d.zstd,
            primer=d.primer,
            name=self.name,
            samples=self.samples,
            sample_bytes=self.sample_bytes,
            created_unix=self.created_unix,
            training_seconds=self.training_seconds,
        ).SerializeToString(deterministic=True)

    @classmethod
    def from_file(cls, data: bytes, where: str = "the dictionary file") -> StoredDictionary:
        """Parse and check a file: DATA_LOSS when it is not one or its contents do not hash
        to its id."""
        msg = pb.DictionaryFile()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            raise DataLoss(
                f"{where} ({len(data)} bytes) cannot be parsed: it is truncated or not an "
                "llmcompress dictionary; export it again with `llmc dict export`"
            ) from None
        if msg.format > FILE_FORMAT:
            raise PreconditionFailed(
                f"{where} uses dictionary format {msg.format}, newer than this server reads "
                f"({FILE_FORMAT}); import it on a newer llmcompress server"
            )
        if msg.format < 1 or len(msg.id) != 32:
            raise DataLoss(f"{where} is not an llmcompress dictionary (no format or id)")
        actual = content_id(msg.zstd, msg.primer)
        if actual != msg.id:
            raise DataLoss(
                f"{where} says it is dictionary {msg.id.hex()[:8]}, but its contents hash to "
                f"{actual.hex()[:8]}: it is corrupted; export it again from a server that holds it"
            )
        return cls(
            Dictionary(zstd=msg.zstd, primer=msg.primer),
            name=msg.name,
            samples=msg.samples,
            sample_bytes=msg.sample_bytes,
            created_unix=msg.created_unix,
            training_seconds=msg.training_seconds,
        )


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidInput(f"dictionary name {name!r} is not valid: use 1-64 of A-Z a-z 0-9 . _ -")
    return name


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, sync, rename, sync the folder: after a crash the file is whole or absent."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{random.getrandbits(32):08x}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskDictionaries:
    """`<path>/<id>.llmcd` files and `<path>/names/<name>` pointers (an id each)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names_path = path / "names"

    def _ensure(self) -> None:
        self.names_path.mkdir(parents=True, exist_ok=True)

    def load(self) -> tuple[list[StoredDictionary], dict[str, str]]:
        """Every whole, valid file and every name. Leftover temporary files of a killed
        process are removed; a corrupt file is logged and skipped."""
        found: list[StoredDictionary] = []
        names: dict[str, str] = {}
        if not self.path.is_dir():
            return found, names
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    entry.unlink()
                continue
            if entry.suffix != SUFFIX:
                continue
            try:
                stored = StoredDictionary.from_file(entry.read_bytes(), str(entry))
            except (DataLoss, PreconditionFailed, OSError) as exc:
                log.error("dictionary file skipped: %s", exc)
                continue
            if entry.stem != stored.hex:
                log.error("dictionary file skipped: %s holds dictionary %s", entry, stored.hex)
                continue
            found.append(stored)
        if self.names_path.is_dir():
            for entry in self.names_path.iterdir():
                if entry.name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        entry.unlink()
                    continue
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    names[entry.name] = entry.read_text("ascii").strip()
        return found, names

    def save(self, stored: StoredDictionary, name: str | None) -> None:
        self._ensure()
        target = self.path / f"{stored.hex}{SUFFIX}"
        if not target.exists():
            _write_atomically(target, stored.to_file())
        if name is not None:
            _write_atomically(self.names_path / name, stored.hex.encode("ascii"))

    def forget(self, hex_id: str, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.names_path / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{hex_id}{SUFFIX}").unlink()


class RedisDictionaries:
    """Two Redis hashes: id -> file, name -> id. Writes are transactions, so a name never
    points at a dictionary that is not there."""

    def __init__(self, url: str, timeout: float) -> None:
        import redis.asyncio as redis  # a server without Redis never loads the client

        self.where = url.split("@")[-1]
        self.timeout = timeout
        self._client: Any = redis.from_url(url, socket_timeout=timeout)

    async def get_file(self, hex_id: str) -> bytes | None:
        value = await self._client.hget(_REDIS_FILES, hex_id)
        return bytes(value) if value is not None else None

    async def ids(self) -> list[str]:
        return [k.decode("ascii") for k in await self._client.hkeys(_REDIS_FILES)]

    async def name(self, name: str) -> str | None:
        value = await self._client.hget(_REDIS_NAMES, name)
        return value.decode("ascii") if value is not None else None

    async def names(self) -> dict[str, str]:
        raw = await self._client.hgetall(_REDIS_NAMES)
        return {k.decode(): v.decode("ascii") for k, v in raw.items()}

    async def save(self, stored: StoredDictionary, name: str | None) -> None:
        async with self._client.pipeline(transaction=True) as tx:
            tx.hset(_REDIS_FILES, stored.hex, stored.to_file())
            if name is not None:
                tx.hset(_REDIS_NAMES, name, stored.hex)
            await tx.execute()

    async def forget(self, hex_id: str, names: Sequence[str]) -> None:
        async with self._client.pipeline(transaction=True) as tx:
            if names:
                tx.hdel(_REDIS_NAMES, *names)
            tx.hdel(_REDIS_FILES, hex_id)
            await tx.execute()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


@dataclass
class _Name:
    hex: str
    checked: float  # monotonic time the pointer was last read from the shared store


@dataclass
class TrainingInput:
    """Samples as they arrive, checked against the limits before more is read."""

    limits: DictionariesConfig
    max_sample_bytes: int
    samples: list[bytes] = field(default_factory=list)
    total: int = 0
    skipped_empty: int = 0

    def add(self, text: str) -> None:
        data = text.encode("utf-8")
        if not data:
            self.skipped_empty += 1
            return
        number = len(self.samples) + self.skipped_empty + 1
        if len(data) > self.max_sample_bytes:
            raise InvalidInput(
                f"sample {number} is {len(data)} bytes, above the {self.max_sample_bytes} a "
                "text may have (compression.max_text_bytes); split it, or leave it out"
            )
        self.total += len(data)
        if self.total > self.limits.max_training_bytes:
            raise InvalidInput(
                f"the training samples passed {self.limits.max_training_bytes} bytes at sample "
                f"{number} (dictionaries.max_training_bytes); send a sample of the corpus: "
                "about 100 times the dictionary's size is enough"
            )
        self.samples.append(data)

    def check(self) -> None:
        if len(self.samples) < self.limits.min_samples:
            raise InvalidInput(
                f"{len(self.samples)} non-empty samples are too few to train a dictionary: "
                f"send at least {self.limits.min_samples} (dictionaries.min_samples), ideally "
                "hundreds of texts of the same kind"
            )


def train_zstd(samples: Sequence[bytes], max_bytes: int) -> bytes:
    """A zstd dictionary of at most `max_bytes` from a seeded shuffle of the samples (the
    trainer is order-sensitive, and the same corpus must give the same dictionary)."""
    order: list[bytes | bytearray | memoryview[int]] = list(samples)
    random.Random(0).shuffle(order)
    budget, used = max_bytes * _TRAINING_FACTOR, 0
    for i, sample in enumerate(order):
        used += len(sample)
        if used > budget:
            order = order[: max(i, 1)]
            break
    total = sum(len(s) for s in order)
    try:
        trained = zstandard.train_dictionary(max_bytes, order, split_point=1.0)
    except zstandard.ZstdError as exc:
        raise InvalidInput(
            f"zstd could not train a dictionary of {max_bytes} bytes from {len(order)} samples "
            f"({total} bytes): {exc}. Send more samples, ideally 100 times the dictionary's "
            "size, or ask for a smaller dictionary (--zstd-bytes)"
        ) from None
    return trained.as_bytes()


class DictionaryStore:
    """Every dictionary this server can code with, by id, short id and name."""

    def __init__(
        self,
        config: DictionariesConfig,
        *,
        max_sample_bytes: int,
        redis_url: str | None = None,
        redis_timeout: float = 2.0,
        events: Events | None = None,
        choose_primer: ChoosePrimer | None = None,
    ) -> None:
        self.config = config
        self.max_sample_bytes = max_sample_bytes
        self.events = events if events is not None else Events()
        self.choose_primer = choose_primer
        self.disk = DiskDictionaries(config.directory)
        self.redis = RedisDictionaries(redis_url, redis_timeout) if redis_url else None
        self._by_hex: dict[str, StoredDictionary] = {}
        self._names: dict[str, _Name] = {}
        self._lock = asyncio.Lock()
        found, names = self.disk.load()
        for stored in found:
            self._by_hex[stored.hex] = stored
        for name, hex_id in names.items():
            if hex_id in self._by_hex:
                self._names[name] = _Name(hex_id, -float("inf"))

    # -- lookups ------------------------------------------------------------

    def cached(self, ref: str) -> Dictionary | None:
        """The dictionary `ref` names, from memory only, or None when that would need a
        look in Redis (the inline BatchCompress path then takes the awaiting one)."""
        name = self._names.get(ref)
        if name is not None:
            fresh = self.redis is None or time.monotonic() - name.checked < NAME_TTL_SECONDS
            stored = self._by_hex.get(name.hex)
            return stored.dictionary if fresh and stored is not None else None
        stored = self._by_prefix(ref) if _ID_PATTERN.match(ref) else None
        return stored.dictionary if stored is not None else None

    async def resolve(self, ref: str) -> Dictionary:
        """The dictionary a request names (a name, or an id of at least 8 hex digits);
        NOT_FOUND when neither this server nor its Redis holds it."""
        return (await self.find(ref)).dictionary

    async def find(self, ref: str) -> StoredDictionary:
        if _ID_PATTERN.match(ref):
            stored = self._by_prefix(ref) or await self._shared_by_prefix(ref)
            if stored is not None:
                return stored
        hex_id = await self._pointer(ref)
        if hex_id is not None:
            stored = self._by_hex.get(hex_id) or await self._shared(hex_id)
            if stored is not None:
                return stored
        raise NotFound(
            f"no dictionary named {ref!r} on this server"
            + (" or in its Redis" if self.redis is not None else "")
            + ": train one with `llmc dict train CORPUS.jsonl --name NAME`, import one with "
            "`llmc dict import FILE`, or see `llmc dict list`"
        )

    async def for_envelope(self, short_id: int) -> Dictionary:
        """The dictionary an envelope names; FAILED_PRECONDITION saying how to get it."""
        prefix = f"{short_id:08x}"
        stored = self._by_prefix(prefix) or await self._shared_by_prefix(prefix)
        if stored is None:
            raise PreconditionFailed(
                f"the envelope was coded with corpus dictionary {prefix}, which this server "
                "does not hold: import it with `llmc dict import FILE` (a file exported with "
                "`llmc dict export` from a server that holds it), then reconstruct again"
            )
        return stored.dictionary

    def _by_prefix(self, prefix: str) -> StoredDictionary | None:
        found = [s for h, s in self._by_hex.items() if h.startswith(prefix)]
        if len(found) > 1:
            raise InvalidInput(f"{prefix} names more than one dictionary; give more hex digits")
        return found[0] if found else None

    async def _pointer(self, name: str) -> str | None:
        known = self._names.get(name)
        now = time.monotonic()
        if self.redis is None or (known is not None and now - known.checked < NAME_TTL_SECONDS):
            return known.hex if known is not None else None
        try:
            hex_id = await self.redis.name(name)
        except Exception as exc:  # a shared store that is down leaves this replica's own
            log.warning("dictionary names in Redis at %s unreadable: %s", self.redis.where, exc)
            return known.hex if known is not None else None
        if hex_id is None:
            self._names.pop(name, None)
            return None
        self._names[name] = _Name(hex_id, now)
        return hex_id

    async def _shared(self, hex_id: str) -> StoredDictionary | None:
        """A dictionary another replica stored in Redis, kept here (memory and disk)."""
        if self.redis is None:
            return None
        try:
            data = await self.redis.get_file(hex_id)
        except Exception as exc:
            where = self.redis.where
            log.warning("dictionary %s unreadable from Redis at %s: %s", hex_id[:8], where, exc)
            return None
        if data is None:
            return None
        stored = StoredDictionary.from_file(data, f"dictionary {hex_id[:8]} in Redis")
        if stored.hex != hex_id:
            raise DataLoss(f"Redis holds dictionary {stored.hex[:8]} under id {hex_id[:8]}")
        self._by_hex[hex_id] = stored
        await asyncio.to_thread(self.disk.save, stored, None)
        return stored

    async def _shared_by_prefix(self, prefix: str) -> StoredDictionary | None:
        if self.redis is None:
            return None
        try:
            ids = [h for h in await self.redis.ids() if h.startswith(prefix)]
        except Exception as exc:
            log.warning("dictionaries in Redis at %s unreadable: %s", self.redis.where, exc)
            return None
        return await self._shared(ids[0]) if len(ids) == 1 else None

    # -- changes ------------------------------------------------------------

    async def train(
        self, name: str, samples: TrainingInput, zstd_bytes: int = 0
    ) -> StoredDictionary:
        check_name(name)
        samples.check()
        start = time.perf_counter()
        size = zstd_bytes or self.config.zstd_bytes
        log.info(
            "training dictionary %s on %d samples (%d bytes), zstd up to %d bytes",
            name,
            len(samples.samples),
            samples.total,
            size,
        )
        attributes = {"llmc.samples": len(samples.samples), "llmc.bytes": samples.total}
        with self.events.tracer.start_as_current_span("dictionary.train", attributes=attributes):
            trained = await asyncio.to_thread(train_zstd, samples.samples, size)
            primer = await self._primer(samples)
        stored = StoredDictionary(
            Dictionary(zstd=trained, primer=primer),
            name=name,
            samples=len(samples.samples),
            sample_bytes=samples.total,
            created_unix=time.time(),
            training_seconds=time.perf_counter() - start,
        )
        await self._save(stored, name)
        self.events.dictionary_trained(stored.training_seconds, len(samples.samples))
        log.info(
            "dictionary %s trained as %s: %d samples (%d bytes), zstd %d bytes, primer %d "
            "bytes, %.2fs",
            name,
            stored.hex[:8],
            stored.samples,
            stored.sample_bytes,
            len(trained),
            len(primer.encode("utf-8")),
            stored.training_seconds,
        )
        return stored

    async def _primer(self, samples: TrainingInput) -> str:
        """The LOSSLESS primer, or "" when this server has no model to choose one with."""
        if self.choose_primer is None or self.config.primer_tokens <= 0:
            return ""
        texts = [s.decode("utf-8") for s in samples.samples]
        try:
            return await self.choose_primer(texts, self.config.primer_tokens)
        except LLMCompressError as exc:
            # The zstd half is still worth having; LOSSLESS codes as without a dictionary.
            log.warning("dictionary trained without a LOSSLESS primer: %s", exc)
            return ""

    async def import_file(self, data: bytes, name: str = "") -> StoredDictionary:
        stored = StoredDictionary.from_file(data)
        name = check_name(name or stored.name)
        clash = self._by_prefix(stored.hex[:8])
        if clash is not None and clash.hex != stored.hex:
            raise PreconditionFailed(
                f"dictionary {stored.hex[:16]} shares its first 8 hex digits with "
                f"{clash.hex[:16]} ({clash.name}), and envelopes store only those: delete one"
            )
        stored = replace(stored, name=name)
        await self._save(stored, name)
        return stored

    async def _save(self, stored: StoredDictionary, name: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self.disk.save, stored, name)
            if self.redis is not None:
                try:
                    await self.redis.save(stored, name)
                except Exception as exc:
                    raise SharedStoreDown(
                        f"dictionary {stored.hex[:8]} ({name}) is stored on this server, but "
                        f"the Redis the replicas share ({self.redis.where}) could not take it "
                        f"({exc}); import it again when Redis is back, or the other replicas "
                        "will not find it"
                    ) from None
            self._by_hex.setdefault(stored.hex, stored)
            self._names[name] = _Name(stored.hex, time.monotonic())

    async def delete(self, ref: str) -> tuple[StoredDictionary, list[str]]:
        stored = await self.find(ref)
        async with self._lock:
            names = [n for n, p in (await self._all_names()).items() if p == stored.hex]
            if self.redis is not None:
                try:
                    await self.redis.forget(stored.hex, names)
                except Exception as exc:  # deleted nowhere rather than on this server alone
                    raise SharedStoreDown(
                        f"dictionary {stored.hex[:8]} was not deleted: the Redis the replicas "
                        f"share ({self.redis.where}) is unreachable ({exc}); try again when it "
                        "is back"
                    ) from None
            await asyncio.to_thread(self.disk.forget, stored.hex, names)
            self._by_hex.pop(stored.hex, None)
            for n in names:
                self._names.pop(n, None)
        log.warning(
            "dictionary %s (%s) deleted: envelopes coded with it can no longer be "
            "reconstructed here",
            stored.hex[:8],
            ", ".join(names) or stored.name,
        )
        return stored, names

    async def _all_names(self) -> dict[str, str]:
        names = {n: p.hex for n, p in self._names.items()}
        if self.redis is not None:
            with contextlib.suppress(Exception):
                names.update(await self.redis.names())
        return names

    async def listing(self) -> list[tuple[StoredDictionary, list[str]]]:
        """Every dictionary, newest first, with the names pointing at it."""
        if self.redis is not None:
            try:
                for hex_id in await self.redis.ids():
                    if hex_id not in self._by_hex:
                        await self._shared(hex_id)
            except Exception as exc:
                log.warning("dictionaries in Redis at %s unreadable: %s", self.redis.where, exc)
        names = await self._all_names()
        out = []
        for stored in sorted(self._by_hex.values(), key=lambda s: -s.created_unix):
            out.append((stored, sorted(n for n, h in names.items() if h == stored.hex)))
        return out

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()


async def read_training(
    requests: AsyncIterator[pb.TrainDictionaryRequest], store: DictionaryStore
) -> tuple[str, int, TrainingInput]:
    """Name, zstd size and samples of a TrainDictionary stream, each checked as it comes."""
    samples = TrainingInput(store.config, store.max_sample_bytes)
    name, size, first = "", 0, True
    async for req in requests:
        if first:
            name, size, first = check_name(req.name), req.zstd_bytes, False
        for text in req.samples:
            samples.add(text)
    if first:
        raise InvalidInput("the TrainDictionary stream was empty: send a name and samples")
    return name, size, samples
