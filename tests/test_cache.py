"""The result cache: key, LRU+TTL bounds, single-flight, and a real Redis shared by two servers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from llmcompress.cli import main as llmc_main
from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App, build_codecs
from llmcompress_server.backends import TextBackend
from llmcompress_server.backends.router import build_text_backend
from llmcompress_server.codecs import CompressOptions, Decoded, Encoded
from llmcompress_server.codecs.zstd import ZstdCodec
from llmcompress_server.core.domain import CompressCommand, Mode
from llmcompress_server.core.errors import BackendUnavailable
from llmcompress_server.core.events import NullSink
from llmcompress_server.flow.cache import (
    REDIS_NAMESPACE,
    CacheableCodec,
    CachedResult,
    MemoryTier,
    SingleFlight,
    cache_key,
)
from llmcompress_server.flow.pipeline import Pipeline
from llmcompress_server.telemetry.stages import StageClock
from tests.conftest import (
    RedisServer,
    SimFactory,
    StartServer,
    load_corpus,
    make_config,
    semantic_config,
    semantic_server,
    slow_text,
)

Stub = pb_grpc.CompressionServiceStub


# --- a real redis-server on a free loopback port ---------------------------------


@pytest.fixture
async def rclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_server.client()
    yield client
    await client.aclose()


def _cfg(redis_url: str | None = None, **cache: object) -> dict[str, dict[str, object]]:
    # These tests are about the cache itself; short ZSTD texts stand in for any cached
    # item, so ZSTD texts of every size are cached (by default the short ones are not).
    return {
        "cache": {"redis_url": redis_url, "redis_timeout": 0.5, "zstd_min_bytes": 0, **cache},
        "compression": {"zstd_level": 3},
    }


async def _compress(
    stub: Stub, text: str, mode: pb.Mode.ValueType = pb.MODE_ZSTD, **kw: object
) -> pb.CompressResponse:
    return await stub.Compress(pb.CompressRequest(text=text, mode=mode, **kw), timeout=60)  # type: ignore[arg-type]


def _tiers(stats: pb.GetStatsResponse) -> dict[str, pb.CacheTierStats]:
    return {t.tier: t for t in stats.cache}


class Stubs:
    def __init__(self) -> None:
        self.channels: list[grpc.aio.Channel] = []

    def __call__(self, app: App) -> Stub:
        channel = grpc.aio.insecure_channel(app.address)
        self.channels.append(channel)
        return pb_grpc.CompressionServiceStub(channel)


@pytest.fixture
async def stubs() -> AsyncIterator[Stubs]:
    made = Stubs()
    yield made
    for channel in made.channels:
        await channel.close()


TEXT = "The cache keeps envelopes, never the text itself. " * 20


# --- the key ------------------------------------------------------------------------


def test_key_changes_with_every_input() -> None:
    data = TEXT.encode()
    zstd19 = ZstdCodec(19).cache_params(CompressOptions())
    base = cache_key(data, Mode.ZSTD, zstd19)
    assert base == cache_key(data, Mode.ZSTD, dict(zstd19))  # deterministic
    variants = [
        cache_key(data + b"!", Mode.ZSTD, zstd19),
        cache_key(data, Mode.LOSSLESS, zstd19),
        cache_key(data, Mode.ZSTD, ZstdCodec(3).cache_params(CompressOptions())),
        cache_key(data, Mode.ZSTD, {**zstd19, "version": 3}),
        cache_key(data, Mode.ZSTD, ZstdCodec(19, small_level=3).cache_params(CompressOptions())),
        cache_key(data, Mode.ZSTD, ZstdCodec(19, small_bytes=64).cache_params(CompressOptions())),
        cache_key(data, Mode.ZSTD, {**zstd19, "model_sha256": "ab" * 32}),
        cache_key(data, Mode.ZSTD, {**zstd19, "verify": False}),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_zstd_key_ignores_options_that_do_not_shape_its_frame() -> None:
    codec = ZstdCodec(19)
    assert codec.cache_params(CompressOptions(verify=True)) == codec.cache_params(
        CompressOptions(verify=False, target_ratio=3.0)
    )


def test_entry_round_trip_and_rejections() -> None:
    data = TEXT.encode()
    codec = ZstdCodec(3)
    env = pb.Envelope(mode=pb.MODE_ZSTD, zstd=pb.ZstdBody(frame=codec.compress_bytes(data)))
    from llmcompress_server.core.envelope import seal

    blob = seal(data, env)
    key = cache_key(data, Mode.ZSTD, codec.cache_params(CompressOptions()))
    entry = CachedResult(
        envelope=blob, mode=Mode.ZSTD, reason="r", quality=pb.QualityScores(overall=0.5)
    )
    back = CachedResult.unpack(key, entry.pack(key), data)
    assert back.envelope == blob
    assert back.mode is Mode.ZSTD
    assert back.reason == "r"
    assert back.quality is not None and back.quality.overall == 0.5
    from llmcompress_server.flow.cache import CorruptEntry

    with pytest.raises(CorruptEntry):
        CachedResult.unpack(key, b"garbage", data)
    with pytest.raises(CorruptEntry):  # right format, other key
        CachedResult.unpack(hashlib.sha256(b"x").digest(), entry.pack(key), data)
    with pytest.raises(CorruptEntry):  # right key, envelope of another text
        CachedResult.unpack(key, entry.pack(key), data + b"?")
    with pytest.raises(CorruptEntry):  # truncated envelope
        CachedResult.unpack(key, entry.pack(key)[:-3], data)


# --- tier 1 ---------------------------------------------------------------------------


def test_memory_tier_lru_order_and_bounds() -> None:
    tier = MemoryTier(max_entries=3, max_bytes=1000, ttl=0)
    for k in (b"a", b"b", b"c"):
        tier.set(k, b"v")
    assert tier.get(b"a") == b"v"  # a is now the most recent
    tier.set(b"d", b"v")
    assert tier.get(b"b") is None  # b was least recently used
    assert [tier.get(k) for k in (b"a", b"c", b"d")] == [b"v"] * 3
    assert len(tier) == 3

    by_bytes = MemoryTier(max_entries=100, max_bytes=250, ttl=0)
    for i in range(10):
        by_bytes.set(bytes([i]), b"x" * 100)
    assert len(by_bytes) == 2
    assert by_bytes.bytes == 200
    by_bytes.set(b"huge", b"x" * 251)  # larger than the whole bound: not kept
    assert by_bytes.get(b"huge") is None
    assert by_bytes.bytes == 200


def test_memory_tier_ttl() -> None:
    now = [100.0]
    tier = MemoryTier(max_entries=10, max_bytes=1000, ttl=5, clock=lambda: now[0])
    tier.set(b"k", b"v")
    now[0] += 4.9
    assert tier.get(b"k") == b"v"  # a hit does not extend the TTL
    now[0] += 0.2
    assert tier.get(b"k") is None
    assert len(tier) == 0 and tier.bytes == 0


async def test_lru_bound_holds_through_the_server(start_server: StartServer, stubs: Stubs) -> None:
    size = 500
    app = await start_server(performance={"cache_size": size}, **_cfg())
    stub = stubs(app)
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            await _compress(stub, f"item {i}: " + "distinct text " * 8)

    await asyncio.gather(*(one(i) for i in range(size + 1000)))
    memory = _tiers(await stub.GetStats(pb.GetStatsRequest()))["memory"]
    assert memory.size == size
    assert memory.max_size == size
    assert memory.misses == size + 1000
    assert 0 < memory.bytes <= memory.max_bytes
    # LRU: the newest entries are in, the oldest were evicted.
    assert (await _compress(stub, f"item {size + 999}: " + "distinct text " * 8)).stats.cache_hit
    assert not (await _compress(stub, "item 0: " + "distinct text " * 8)).stats.cache_hit


async def test_ttl_expiry_through_both_tiers(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer
) -> None:
    conf = _cfg(redis_server.url)
    stub = stubs(await start_server(performance={"cache_ttl": 0.8}, **conf))
    other = stubs(await start_server(performance={"cache_ttl": 0.8}, **conf))
    assert not (await _compress(stub, TEXT)).stats.cache_hit
    assert (await _compress(stub, TEXT)).stats.cache_hit  # memory
    assert (await _compress(other, "x" + TEXT)).stats.cache_hit is False
    assert (await _compress(stub, "x" + TEXT)).stats.cache_hit  # through Redis
    await asyncio.sleep(1.2)
    # Gone from both tiers (each call below would find the other's copy otherwise).
    assert not (await _compress(other, TEXT)).stats.cache_hit
    assert not (await _compress(stub, "x" + TEXT)).stats.cache_hit
    tiers = _tiers(await stub.GetStats(pb.GetStatsRequest()))
    assert tiers["redis"].errors == 0
    assert (tiers["redis"].hits, tiers["redis"].misses) == (1, 2)


# --- hits are faithful -----------------------------------------------------------------


async def test_hit_returns_stats_of_the_stored_envelope(
    start_server: StartServer, stubs: Stubs
) -> None:
    app = await start_server(**_cfg())
    stub = stubs(app)
    first = await _compress(stub, TEXT, pb.MODE_ZSTD)
    again = await _compress(stub, TEXT, pb.MODE_UNSPECIFIED)  # default mode is ZSTD: same key
    assert not first.stats.cache_hit
    assert again.stats.cache_hit
    assert again.envelope == first.envelope
    for field in ("original_bytes", "compressed_bytes", "ratio", "mode", "model", "reason"):
        assert getattr(again.stats, field) == getattr(first.stats, field), field
    assert [s.stage for s in again.stats.stages] == ["admission.wait", "validate", "cache.lookup"]
    back = await stub.Reconstruct(pb.ReconstructRequest(envelope=again.envelope))
    assert back.text == TEXT


async def test_skip_cache_and_disabled_cache(start_server: StartServer, stubs: Stubs) -> None:
    app = await start_server(**_cfg())
    stub = stubs(app)
    await _compress(stub, TEXT)
    resp = await _compress(stub, TEXT, skip_cache=True)
    assert not resp.stats.cache_hit
    assert "cache.lookup" not in [s.stage for s in resp.stats.stages]

    off = await start_server(**_cfg(enabled=False))
    off_stub = stubs(off)
    await _compress(off_stub, TEXT)
    assert not (await _compress(off_stub, TEXT)).stats.cache_hit
    assert not (await off_stub.GetStats(pb.GetStatsRequest())).cache


class NoHookCodec:
    """A codec that cannot name its inputs: never cached."""

    def __init__(self) -> None:
        self.inner = ZstdCodec(3)

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        return await self.inner.encode(text, opts, clock)

    async def decode(self, env: pb.Envelope, clock: StageClock) -> Decoded:
        return await self.inner.decode(env, clock)


async def test_codec_without_hook_is_not_cached() -> None:
    pipeline = Pipeline(make_config(cache={"zstd_min_bytes": 0}), {Mode.ZSTD: NoHookCodec()})
    await pipeline.compress(CompressCommand(TEXT, Mode.ZSTD))
    assert not (await pipeline.compress(CompressCommand(TEXT, Mode.ZSTD))).cache_hit
    await pipeline.close()


# --- short ZSTD texts: coded, not cached ---------------------------------------------------


def _batch(*texts: str) -> AsyncIterator[pb.BatchCompressRequest]:
    async def requests() -> AsyncIterator[pb.BatchCompressRequest]:
        for i, text in enumerate(texts):
            request = pb.CompressRequest(text=text, mode=pb.MODE_ZSTD)
            yield pb.BatchCompressRequest(id=str(i), request=request)

    return requests()


async def test_short_zstd_texts_are_coded_not_cached(
    start_server: StartServer, stubs: Stubs
) -> None:
    app = await start_server()  # the default cache.zstd_min_bytes, 4096
    stub = stubs(app)
    short, edge = "a short record: 140 bytes or so. " * 4, "y" * 4095
    long = "x" + "A record long enough to be worth caching. " * 100  # 4,201 bytes
    for text in (short, edge):
        first, again = await _compress(stub, text), await _compress(stub, text)
        assert not first.stats.cache_hit and not again.stats.cache_hit
        assert first.envelope == again.envelope
        assert not [t.stage for t in again.stats.stages if t.stage.startswith("cache.")]
    assert not (await _compress(stub, long)).stats.cache_hit
    assert (await _compress(stub, long)).stats.cache_hit
    # The same in a stream (the inline path): the long text hits, the short ones never.
    answers = [a async for a in stub.BatchCompress(_batch(short, long, short, "y" * 4096))]
    assert [a.result.stats.cache_hit for a in sorted(answers, key=lambda a: a.id)] == [
        False,
        True,
        False,
        False,
    ]
    cache = app.pipeline.cache
    assert cache is not None and len(cache.memory) == 2  # `long` and the 4,096-byte text


async def test_short_zstd_items_skip_redis_and_are_answered_inline(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer, rclient: aioredis.Redis
) -> None:
    # A Redis round trip costs more than coding a short text, so such items never ask it,
    # and BatchCompress answers them as they are read even on a replica with Redis.
    conf = {"cache": {"redis_url": redis_server.url}}
    inline: list[str] = []

    class Stages(NullSink):
        def stages_finished(self, timings: Sequence[tuple[str, float]]) -> None:
            inline.extend(stage for stage, _ in timings)  # only the inline path reports so

    stub = stubs(await start_server(**conf, sinks=[Stages()]))
    texts = [f"item {i}: a short record of one kind" for i in range(50)]
    answers = [a async for a in stub.BatchCompress(_batch(*texts, *texts))]
    assert len(answers) == 100 and not any(a.result.stats.cache_hit for a in answers)
    assert inline.count("zstd.encode") == 100
    assert not (await _compress(stub, texts[0])).stats.cache_hit  # nor a Compress
    assert await rclient.dbsize() == 0
    long = "A record long enough to be worth caching. " * 100
    await _compress(stub, long)
    assert await rclient.dbsize() == 1


# --- single-flight -----------------------------------------------------------------------


async def test_single_flight_shares_one_run_and_its_exception() -> None:
    flights: SingleFlight[int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    callers = [asyncio.create_task(flights.run("k", work)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*callers)
    assert runs == 1
    assert [r for r, _ in results] == [42] * 50
    assert sum(shared for _, shared in results) == 49
    assert len(flights) == 0

    async def fail() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        raise BackendUnavailable("down")

    runs = 0
    outcomes = await asyncio.gather(
        *(flights.run("e", fail) for _ in range(10)), return_exceptions=True
    )
    assert runs == 1
    assert all(isinstance(o, BackendUnavailable) for o in outcomes)
    # Not poisoned: the next call runs again.
    assert await flights.run("e", work) == (42, False)


async def test_single_flight_survives_a_cancelled_caller() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == ("done", True)
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_single_flight_cancels_the_run_when_its_last_caller_leaves() -> None:
    flights: SingleFlight[str] = SingleFlight()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    callers = [asyncio.create_task(flights.run("k", work)) for _ in range(2)]
    await started.wait()
    callers[0].cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set() and "k" in flights  # one caller still waits
    callers[1].cancel()
    await asyncio.wait_for(cancelled.wait(), 1.0)  # a cancel reaches the work
    assert "k" not in flights
    for caller in callers:
        with pytest.raises(asyncio.CancelledError):
            await caller


class FlakyCodec(ZstdCodec):
    """Fails its first encode the way an unreachable backend does."""

    def __init__(self) -> None:
        super().__init__(3)
        self.calls = 0

    async def encode(self, text: str, opts: CompressOptions, clock: StageClock) -> Encoded:
        self.calls += 1
        await asyncio.sleep(0.05)
        if self.calls == 1:
            raise BackendUnavailable("backend at 127.0.0.1:1 refused the connection")
        return await super().encode(text, opts, clock)


async def test_a_shared_failure_reaches_every_caller_and_is_not_cached() -> None:
    codec = FlakyCodec()
    pipeline = Pipeline(make_config(cache={"zstd_min_bytes": 0}), {Mode.ZSTD: codec})
    outcomes = await asyncio.gather(
        *(pipeline.compress(CompressCommand(TEXT, Mode.ZSTD)) for _ in range(20)),
        return_exceptions=True,
    )
    assert codec.calls == 1
    assert all(isinstance(o, BackendUnavailable) for o in outcomes)
    ok = await pipeline.compress(CompressCommand(TEXT, Mode.ZSTD))
    assert codec.calls == 2 and not ok.cache_hit
    assert (await pipeline.compress(CompressCommand(TEXT, Mode.ZSTD))).cache_hit
    await pipeline.close()


async def test_fifty_identical_requests_make_one_encode(
    start_server: StartServer, stubs: Stubs
) -> None:
    # zstd -19 on 300 KB takes a good fraction of a second here, so the 50
    # calls arrive while the first one is still encoding.
    encodes: list[str] = []

    class Count(NullSink):
        def stage_finished(self, stage: str, seconds: float, self_seconds: float) -> None:
            if stage == "zstd.encode":
                encodes.append(stage)

    app = await start_server(compression={"zstd_level": 19}, sinks=[Count()])
    stub = stubs(app)
    text = slow_text(300_000, seed=7)
    responses = await asyncio.gather(*(_compress(stub, text) for _ in range(50)))
    assert len(encodes) == 1
    assert len({r.envelope for r in responses}) == 1
    assert sum(not r.stats.cache_hit for r in responses) == 1
    cache = app.pipeline.cache
    assert cache is not None and cache.computed == 1
    assert cache.coalesced >= 1  # some joined the run in flight, the rest hit memory


async def test_fifty_identical_semantic_requests_make_one_backend_call(
    start_server: StartServer, sim_ollama: SimFactory, stubs: Stubs
) -> None:
    # Each model call holds the simulated Ollama 0.3 s: the 50 arrive while it runs.
    sim = await sim_ollama(latency=0.3, slots=8)
    app = await semantic_server(start_server, sim.url)
    stub = stubs(app)
    text = load_corpus()[0]["text"]
    responses = await asyncio.gather(
        *(_compress(stub, text, mode=pb.MODE_SEMANTIC) for _ in range(50))
    )
    assert sim.stats.calls == 1, sim.stats_dict()  # counted where the calls land
    assert {r.stats.mode for r in responses} == {pb.MODE_SEMANTIC}
    assert not any(r.stats.degraded for r in responses)
    assert len({r.envelope for r in responses}) == 1
    assert sum(not r.stats.cache_hit for r in responses) == 1
    cache = app.pipeline.cache
    assert cache is not None and cache.computed == 1 and cache.coalesced >= 1
    # ... and the next identical request is a memory hit, still one call at the backend.
    again = await _compress(stub, text, mode=pb.MODE_SEMANTIC)
    assert again.stats.cache_hit and again.envelope == responses[0].envelope
    assert sim.stats.calls == 1


def test_semantic_key_names_what_shapes_the_summary() -> None:
    codecs = build_codecs(semantic_config("http://127.0.0.1:9"), None, _router("127.0.0.1:9"))
    codec = codecs[Mode.SEMANTIC]
    assert isinstance(codec, CacheableCodec)
    base = codec.cache_params(CompressOptions())
    assert base is not None and "127.0.0.1:9" in str(base["models"])
    assert codec.cache_params(CompressOptions(target_ratio=5.0)) != base
    other = semantic_config("http://127.0.0.1:9", timeout=5.0)  # llm.timeout shapes nothing
    same = build_codecs(other, None, _router("127.0.0.1:9"))[Mode.SEMANTIC]
    assert isinstance(same, CacheableCodec) and same.cache_params(CompressOptions()) == base
    moved = build_codecs(semantic_config("http://127.0.0.1:8"), None, _router("127.0.0.1:8"))
    moved_codec = moved[Mode.SEMANTIC]
    assert isinstance(moved_codec, CacheableCodec)
    assert moved_codec.cache_params(CompressOptions()) != base


def _router(host: str) -> TextBackend | None:
    return build_text_backend(semantic_config(f"http://{host}"), None, environ={})


# --- Redis: shared, corrupt, down, stalled ----------------------------------------------------


async def test_two_servers_share_hits_through_redis(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer
) -> None:
    a = stubs(await start_server(**_cfg(redis_server.url)))
    b = stubs(await start_server(**_cfg(redis_server.url)))
    first = await _compress(a, TEXT)
    shared = await _compress(b, TEXT)
    assert not first.stats.cache_hit
    assert shared.stats.cache_hit
    assert shared.envelope == first.envelope
    for field in ("original_bytes", "compressed_bytes", "ratio", "mode", "model"):
        assert getattr(shared.stats, field) == getattr(first.stats, field), field
    assert [s.stage for s in shared.stats.stages] == [
        "admission.wait",
        "validate",
        "cache.lookup",
        "cache.lookup.redis",
    ]
    tiers = _tiers(await b.GetStats(pb.GetStatsRequest()))
    assert (tiers["redis"].hits, tiers["redis"].misses) == (1, 0)
    assert tiers["redis"].available and tiers["redis"].errors == 0
    assert (tiers["memory"].hits, tiers["memory"].misses, tiers["memory"].size) == (0, 1, 1)
    # The Redis hit was promoted into B's memory tier.
    assert (await _compress(b, TEXT)).stats.stages[-1].stage == "cache.lookup"
    assert (await b.Reconstruct(pb.ReconstructRequest(envelope=shared.envelope))).text == TEXT


async def test_only_envelopes_reach_redis(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer, rclient: aioredis.Redis
) -> None:
    stub = stubs(await start_server(**_cfg(redis_server.url)))
    secret = "a confidential sentence that must not be stored in the clear " * 10
    resp = await _compress(stub, secret)
    keys = await rclient.keys("*")
    assert len(keys) == 1 and keys[0].startswith(REDIS_NAMESPACE.encode() + b":")
    value = await rclient.get(keys[0])
    # The entry is a small header plus the envelope Compress returned; the text
    # is in it only as the envelope holds it (a zstd frame keeps literals).
    assert value.endswith(resp.envelope)
    assert b"confidential" not in value[: -len(resp.envelope)]
    assert len(value) - len(resp.envelope) < 150
    assert 0 < await rclient.pttl(keys[0]) <= 7200 * 1000


async def test_corrupt_redis_value_is_a_miss_and_is_deleted(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer, rclient: aioredis.Redis
) -> None:
    a = stubs(await start_server(**_cfg(redis_server.url)))
    other = "another text entirely, also cached. " * 10
    await _compress(a, TEXT)
    await _compress(a, other)
    by_len = sorted(await rclient.keys("*"))
    values = {k: await rclient.get(k) for k in by_len}
    events: list[tuple[str, str]] = []

    class Watch(NullSink):
        def cache_event(self, event: str, tier: str, seconds: float) -> None:
            events.append((event, tier))

    for garbage_kind in ("garbage", "swapped"):
        for k in by_len:
            # Garbage bytes, then valid entries written under each other's key.
            bad = (
                b"\x00not an entry"
                if garbage_kind == "garbage"
                else values[by_len[1 - by_len.index(k)]]
            )
            await rclient.set(k, bad)
        b = stubs(
            await start_server(**_cfg(redis_server.url), sinks=[Watch()])
        )  # empty memory tier
        for text in (TEXT, other):
            resp = await _compress(b, text)
            assert not resp.stats.cache_hit
            assert (await b.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))).text == text
        # Deleted, then re-stored by the computation that followed.
        assert {k: await rclient.get(k) for k in by_len} == values
    assert events.count(("corrupt", "redis")) == 4


async def test_killing_redis_mid_run_fails_no_request(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer
) -> None:
    app = await start_server(**_cfg(redis_server.url))
    stub = stubs(app)
    # Half repeat (memory hits), half are new (Redis lookups and stores).
    texts = [
        (f"passage {i % 40}: " if i % 2 else f"fresh {i}: ") + "words that repeat " * 10
        for i in range(240)
    ]
    latencies: list[float] = []
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> pb.CompressResponse:
        async with sem:
            if i == 120:
                redis_server.kill()
            t0 = time.perf_counter()
            resp = await _compress(stub, texts[i])
            latencies.append(time.perf_counter() - t0)
            return resp

    responses = await asyncio.gather(*(one(i) for i in range(len(texts))))
    assert len(responses) == len(texts)  # gather raised nothing: no request failed
    # redis_timeout is 0.5 s; allow generous slack for a loaded 2-core machine.
    assert max(latencies) < 5.0, max(latencies)
    tiers = _tiers(await stub.GetStats(pb.GetStatsRequest()))
    assert tiers["redis"].errors >= 1
    assert not tiers["redis"].available  # in reconnect backoff
    assert tiers["memory"].hits > 0  # tier 1 kept serving hits


async def test_a_stalled_redis_costs_at_most_its_timeout(
    start_server: StartServer, stubs: Stubs, redis_server: RedisServer
) -> None:
    app = await start_server(**_cfg(redis_server.url, redis_timeout=0.2))
    stub = stubs(app)
    await _compress(stub, "warm the connection " * 10)
    redis_server.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        latencies = []
        for i in range(20):
            t0 = time.perf_counter()
            resp = await _compress(stub, f"new text {i} " * 20)
            latencies.append(time.perf_counter() - t0)
            assert not resp.stats.cache_hit
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    # Only the first calls pay the timeout; later ones skip Redis while it backs off,
    # which the error count shows. The latency bounds only catch a call stuck on the
    # stalled socket (no timeout at all): ten times what an idle machine needs.
    tiers = _tiers(await stub.GetStats(pb.GetStatsRequest()))
    assert 0 < tiers["redis"].errors <= 3
    assert max(latencies) < 30.0, latencies
    assert sorted(latencies)[len(latencies) // 2] < 1.5, latencies


# --- llmc warm ------------------------------------------------------------------------------


async def test_llmc_warm_fills_the_cache(
    start_server: StartServer,
    stubs: Stubs,
    corpus: list[dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = await start_server(**_cfg())
    items = corpus[:25]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    args = ["warm", str(path), "--mode", "zstd", "--server", app.address]
    assert await asyncio.to_thread(llmc_main, args) == 0
    err = capsys.readouterr().err
    assert "warmed 25 items" in err and "25 compressed, 0 already cached" in err
    stub = stubs(app)
    for item in items[:5]:
        assert (await _compress(stub, item["text"])).stats.cache_hit
    assert await asyncio.to_thread(llmc_main, args) == 0
    assert "0 compressed, 25 already cached" in capsys.readouterr().err

    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n', encoding="utf-8")
    assert await asyncio.to_thread(llmc_main, ["warm", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


async def test_llmc_stats_prints_cache_tiers(
    start_server: StartServer, stubs: Stubs, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_server(performance={"cache_size": 10}, **_cfg())
    stub = stubs(app)
    await _compress(stub, TEXT)
    await _compress(stub, TEXT)
    assert await asyncio.to_thread(llmc_main, ["stats", "--server", app.address]) == 0
    out = capsys.readouterr().out
    assert "cache memory: hits 1, misses 1, hit ratio 50.0%, size 1/10" in out
    assert "cache total: hits 1, misses 1, hit ratio 50.0%" in out
