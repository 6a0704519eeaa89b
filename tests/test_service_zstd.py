"""The real aio server on loopback: ZSTD round trips over the corpus, and bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App
from llmcompress_server.core.envelope import FORMAT_VERSION, seal_zstd

from .conftest import StartServer, format1_zstd_envelope, load_corpus, slow_text

Stub = pb_grpc.CompressionServiceStub


async def _compress(stub: Stub, text: str, mode: int = pb.MODE_ZSTD) -> pb.CompressResponse:
    return await stub.Compress(pb.CompressRequest(text=text, mode=mode))


async def _code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_corpus_round_trips_exactly(stub: Stub, corpus: list[dict[str, str]]) -> None:
    exact = 0
    for item in corpus:
        resp = await _compress(stub, item["text"])
        original = len(item["text"].encode("utf-8"))
        # The ratio is original bytes over the whole serialized envelope.
        assert resp.stats.original_bytes == original
        assert resp.stats.compressed_bytes == len(resp.envelope)
        assert resp.stats.ratio == pytest.approx(original / len(resp.envelope))
        assert resp.stats.mode == pb.MODE_ZSTD
        back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
        exact += back.text == item["text"] and back.exact
    assert exact == len(corpus) == 164


async def test_envelope_header_is_readable_without_the_server(stub: Stub) -> None:
    # Format 4's compact ZSTD envelope: its version and a magicless zstd frame that carries
    # the length and a checksum, which any zstd library reads.
    text = "The envelope names its format; the frame, its length and checksum. " * 10
    resp = await _compress(stub, text)
    env = pb.Envelope.FromString(resp.envelope)
    assert env.version == 4 and env.WhichOneof("body") == "zstd"
    assert not env.magic and not env.mode and not env.original_length
    assert not env.HasField("model") and not env.dictionary
    magicless = zstandard.FORMAT_ZSTD1_MAGICLESS
    frame = zstandard.get_frame_parameters(env.zstd.frame, format=magicless)
    assert frame.content_size == len(text.encode()) and frame.has_checksum
    back = zstandard.ZstdDecompressor(format=magicless).decompress(env.zstd.frame)
    assert back == text.encode()


async def test_compact_envelope_of_a_short_record(stub: Stub) -> None:
    # What format 4 is for: the envelope of a short record adds 6 bytes to its frame
    # (version 2, body field 2, frame field 2); format 1 added 24.
    text = "Fix a crash when the configuration file is empty (Closes: #1034567); thanks Ana."
    data = text.encode()
    resp = await _compress(stub, text)
    frame = pb.Envelope.FromString(resp.envelope).zstd.frame
    plain = zstandard.ZstdCompressor(level=19, write_checksum=False).compress(data)
    assert len(resp.envelope) - len(frame) == 6
    # The magic number out, the checksum in: the frame is plain zstd -19's size.
    assert len(frame) == len(plain)
    assert len(format1_zstd_envelope(data)) == len(plain) + 24  # format 1's header


@pytest.mark.parametrize("size", [0, 1, 100, 127, 128, 300, 16_383, 16_384, 70_000])
@pytest.mark.parametrize("dictionary", [0, 1, 0xDEADBEEF])
def test_compact_envelope_is_written_as_protobuf_writes_it(size: int, dictionary: int) -> None:
    # seal_zstd writes the wire format by hand: the same bytes as the message, for frames
    # whose lengths take one, two and three varint bytes, with and without a dictionary.
    frame = bytes(range(256)) * (size // 256) + bytes(size % 256)
    message = pb.Envelope(version=4, dictionary=dictionary, zstd=pb.ZstdBody(frame=frame))
    assert seal_zstd(frame, dictionary) == message.SerializeToString(deterministic=True)


async def test_envelopes_of_earlier_formats_still_read(stub: Stub) -> None:
    for text in ("", "x", "An envelope written before format 4. " * 40):
        back = await stub.Reconstruct(
            pb.ReconstructRequest(envelope=format1_zstd_envelope(text.encode()))
        )
        assert back.text == text and back.exact
    env = pb.Envelope.FromString(format1_zstd_envelope(b"checked by its hash"))
    env.original_hash ^= 1
    err = await _reconstruct_error(stub, _reseal(env))
    assert err.code() == grpc.StatusCode.DATA_LOSS


async def test_an_envelope_naming_a_dictionary_is_refused_clearly(stub: Stub) -> None:
    env = pb.Envelope.FromString(await _envelope(stub))
    env.dictionary = 0x1234ABCD
    err = await _reconstruct_error(stub, _reseal(env))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1234abcd" in (err.details() or "")


async def test_stats_carry_stage_timings(stub: Stub) -> None:
    resp = await _compress(stub, "timed " * 700)  # 4,200 bytes: long enough to be cached
    stages = [s.stage for s in resp.stats.stages]
    assert stages == [
        "admission.wait",
        "validate",
        "cache.lookup",
        "zstd.encode",
        "pack",
        "cache.store",
    ]
    assert all(s.seconds >= 0 for s in resp.stats.stages)
    assert resp.stats.total_seconds >= sum(s.seconds for s in resp.stats.stages)


@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
async def test_empty_and_whitespace_give_a_tiny_exact_envelope(stub: Stub, text: str) -> None:
    # Documented answer: a valid envelope stored as ZSTD, whatever mode was asked.
    resp = await _compress(stub, text, pb.MODE_LOSSLESS)
    assert resp.stats.mode == pb.MODE_ZSTD
    assert resp.stats.requested_mode == pb.MODE_LOSSLESS
    assert "empty or whitespace-only" in resp.stats.reason
    assert len(resp.envelope) < 40
    back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
    assert back.text == text
    assert back.exact


async def test_unicode_round_trips(stub: Stub) -> None:
    text = "naïve café — 東京 🚀 " * 20
    resp = await _compress(stub, text)
    assert resp.stats.original_bytes == len(text.encode("utf-8"))
    back = await stub.Reconstruct(pb.ReconstructRequest(envelope=resp.envelope))
    assert back.text == text


async def test_text_above_the_limit_names_it(start_server: StartServer) -> None:
    app = await start_server(compression={"max_text_bytes": 1000})
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = Stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _compress(stub, "x" * 1001)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1000 bytes" in (info.value.details() or "")
        assert "compression.max_text_bytes" in (info.value.details() or "")
        ok = await _compress(stub, "x" * 1000)
        assert ok.stats.original_bytes == 1000


async def test_default_limit_is_4_mib(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _compress(stub, "y" * (4 * 1024 * 1024 + 1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4194304 bytes" in (info.value.details() or "")


@pytest.mark.parametrize("field", ["mode", "quality"])
async def test_unknown_enum_value(stub: Stub, field: str) -> None:
    req = pb.CompressRequest(text="some text to compress")
    setattr(req, field, 42)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Compress(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} 42 is not a known" in (info.value.details() or "")


async def test_bad_target_ratio(stub: Stub) -> None:
    req = pb.CompressRequest(text="text", mode=pb.MODE_ZSTD, target_ratio=0.5)
    assert await _code_of(stub.Compress(req)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_invalid_utf8_in_a_string_field(server: App) -> None:
    # A non-Python client can put any bytes in a proto string; field 1, length 2.
    raw = b"\x0a\x02\xff\xfe"
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/llmcompress.v1.CompressionService/Compress")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(raw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in (info.value.details() or "")


async def _envelope(stub: Stub) -> bytes:
    resp = await _compress(stub, "An envelope that we will damage in many ways. " * 8)
    return resp.envelope


def _reseal(env: pb.Envelope) -> bytes:
    return env.SerializeToString()


async def _reconstruct_error(stub: Stub, data: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Reconstruct(pb.ReconstructRequest(envelope=data))
    return info.value


async def test_empty_envelope(stub: Stub) -> None:
    err = await _reconstruct_error(stub, b"")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in (err.details() or "")


async def test_truncated_envelope(stub: Stub) -> None:
    data = await _envelope(stub)
    for cut in (1, 5, len(data) // 2, len(data) - 1):
        err = await _reconstruct_error(stub, data[:cut])
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DATA_LOSS), cut


async def test_payload_bit_flip_is_data_loss(stub: Stub) -> None:
    data = await _envelope(stub)
    env = pb.Envelope.FromString(data)
    frame = bytearray(env.zstd.frame)
    frame[len(frame) // 2] ^= 0x10
    env.zstd.frame = bytes(frame)
    err = await _reconstruct_error(stub, _reseal(env))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "corrupt" in (err.details() or "")


async def test_every_single_bit_flip_is_refused_or_exact(stub: Stub) -> None:
    # Never wrong text: each flip gives a documented status, or (if it hits a
    # field that does not change the text) the exact original back.
    text = "Flip every bit; the checksum must catch what matters. " * 3
    data = (await _compress(stub, text)).envelope
    allowed = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            back = await stub.Reconstruct(pb.ReconstructRequest(envelope=bytes(flipped)))
        except grpc.aio.AioRpcError as err:
            assert err.code() in allowed, (i, err.code(), err.details())
        else:
            assert back.text == text, i


async def test_checksum_mismatch_is_data_loss(stub: Stub) -> None:
    # A compact frame's checksum is its last 4 bytes.
    env = pb.Envelope.FromString(await _envelope(stub))
    frame = bytearray(env.zstd.frame)
    frame[-1] ^= 1
    env.zstd.frame = bytes(frame)
    err = await _reconstruct_error(stub, _reseal(env))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "corrupt" in (err.details() or "")


async def test_foreign_bytes(stub: Stub) -> None:
    foreign = [
        b"hello, I am not an envelope",
        pb.CompressRequest(text="a request, not an envelope").SerializeToString(),
        bytes(range(256)),
    ]
    for data in foreign:
        err = await _reconstruct_error(stub, data)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, data[:20]


async def test_newer_format_version(stub: Stub) -> None:
    env = pb.Envelope.FromString(await _envelope(stub))
    env.version = FORMAT_VERSION + 1
    err = await _reconstruct_error(stub, _reseal(env))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "newer llmcompress" in (err.details() or "")


async def test_mode_and_body_disagree(stub: Stub) -> None:
    env = pb.Envelope.FromString(await _envelope(stub))
    env.mode = pb.MODE_LOSSLESS
    err = await _reconstruct_error(stub, _reseal(env))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection(server: App) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "llmcompress.v1.CompressionService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        names = set()
        async for resp in refl.ServerReflectionInfo(iter([req])):
            names |= {s.name for s in resp.list_services_response.service}
        assert "llmcompress.v1.CompressionService" in names
        assert "grpc.health.v1.Health" in names


async def test_graceful_shutdown_lets_calls_finish(start_server: StartServer) -> None:
    app = await start_server()
    # Distinct texts (~1 s each in zstd -19), so the cache cannot merge the calls.
    texts = [slow_text(1_000_000, seed=n) for n in range(3)]
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = Stub(channel)
        await _compress(stub, "warm the channel up")
        calls = [asyncio.ensure_future(_compress(stub, text)) for text in texts]
        await asyncio.sleep(0.2)  # all three are in flight now
        await app.stop(grace=30)
        results = await asyncio.gather(*calls, return_exceptions=True)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await _compress(stub, "too late")
    # In flight when the stop began: finished within the grace period.
    for result, text in zip(results, texts, strict=True):
        assert isinstance(result, pb.CompressResponse), result
        assert result.stats.original_bytes == len(text)
    # After the stop: refused at once, never hung.
    assert late.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


async def test_health_goes_not_serving_on_shutdown(start_server: StartServer) -> None:
    app = await start_server()
    await app.health.enter_graceful_shutdown()
    async with grpc.aio.insecure_channel(app.address) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_batch_compress_answers_every_id(stub: Stub) -> None:
    items = [
        pb.BatchCompressRequest(
            id=f"i{n}", request=pb.CompressRequest(text=f"item number {n} " * 20, mode=pb.MODE_ZSTD)
        )
        for n in range(200)
    ]
    items[17].request.mode = 42  # a bad item must not end the stream
    answers = [r async for r in stub.BatchCompress(iter(items))]
    ids = [a.id for a in answers]
    assert sorted(ids) == sorted(i.id for i in items)
    bad = next(a for a in answers if a.id == "i17")
    assert bad.WhichOneof("outcome") == "error"
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert sum(a.WhichOneof("outcome") == "result" for a in answers) == 199


async def test_batch_compress_in_order(stub: Stub) -> None:
    items = [
        pb.BatchCompressRequest(
            id=str(n),
            in_order=True,
            request=pb.CompressRequest(
                text=("long " * 20000) if n % 3 == 0 else "short text here", mode=pb.MODE_ZSTD
            ),
        )
        for n in range(30)
    ]
    answers = [r.id async for r in stub.BatchCompress(iter(items))]
    assert answers == [str(n) for n in range(30)]


async def test_overload_is_refused_at_once_with_a_retry_hint(start_server: StartServer) -> None:
    app = await start_server(performance={"max_queue": 1})
    big = slow_text(1_500_000)  # keeps the one slot busy for ~1.5 s
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = Stub(channel)
        await _compress(stub, "warm up")
        busy = asyncio.ensure_future(_compress(stub, big))
        await asyncio.sleep(0.15)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _compress(stub, "one more")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "performance.max_queue" in (info.value.details() or "")
        trailers = dict(info.value.trailing_metadata() or ())
        assert int(trailers["retry-after-ms"]) > 0
        assert (await busy).stats.original_bytes == len(big)
        # Streams wait for room instead of failing.
        items = [
            pb.BatchCompressRequest(id=str(n), request=pb.CompressRequest(text="q " * 50, mode=3))
            for n in range(20)
        ]
        answers = [a async for a in stub.BatchCompress(iter(items))]
        assert all(a.WhichOneof("outcome") == "result" for a in answers)
        assert len(answers) == 20


async def test_a_second_server_on_the_same_port_is_refused(server: App) -> None:
    from llmcompress_server.api.server import create_server

    from .conftest import make_config

    with pytest.raises(OSError, match="cannot bind"):
        await create_server(make_config(server={"port": server.port}))


def test_default_levels_by_size() -> None:
    # Level 19 where it is cheap (up to 512 bytes), level 6 above (compression.zstd_*).
    from llmcompress_server.codecs.zstd import ZstdCodec
    from llmcompress_server.core.config import load_config

    comp = load_config(environ={}).compression
    assert (comp.zstd_small_level, comp.zstd_small_bytes, comp.zstd_level) == (19, 512, 6)
    codec = ZstdCodec(comp.zstd_level, comp.zstd_small_level, comp.zstd_small_bytes)
    prose = " ".join(item["text"] for item in load_corpus()[:20]).encode()

    def frame(data: bytes, level: int) -> bytes:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=True
        )
        return zstandard.ZstdCompressor(compression_params=params).compress(data)

    for size, level, other in ((300, 19, 6), (512, 19, 6), (2_000, 6, 19), (20_000, 6, 19)):
        data = prose[:size]
        assert frame(data, level) != frame(data, other), size  # the levels do differ here
        assert codec.compress_bytes(data) == frame(data, level), size


def test_short_texts_with_a_dictionary_take_their_own_level() -> None:
    # compression.zstd_dictionary_small_level (17) up to 512 bytes, zstd_level (6) above.
    from llmcompress_server.codecs.zstd import ZstdCodec
    from llmcompress_server.core.config import load_config
    from llmcompress_server.core.dictionary import Dictionary

    comp = load_config(environ={}).compression
    assert comp.zstd_dictionary_small_level == 17
    codec = ZstdCodec(
        comp.zstd_level,
        comp.zstd_small_level,
        comp.zstd_small_bytes,
        comp.zstd_dictionary_small_level,
    )
    texts = [item["text"].encode() for item in load_corpus()]
    trained = zstandard.train_dictionary(16_384, texts[:120]).as_bytes()
    dictionary = Dictionary(zstd=trained)
    prose = b" ".join(texts[120:])

    def frame(data: bytes, level: int) -> bytes:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=True, write_dict_id=False
        )
        trained_dict = zstandard.ZstdCompressionDict(trained)
        return zstandard.ZstdCompressor(dict_data=trained_dict, compression_params=params).compress(
            data
        )

    assert codec.level_for(300, True) == 17 and codec.level_for(300, False) == 19
    for size, level, other in ((200, 17, 19), (512, 17, 19), (2_000, 6, 17)):
        data = prose[:size]
        assert frame(data, level) != frame(data, other), size  # the levels do differ here
        assert codec.compress_bytes(data, dictionary) == frame(data, level), size
    back = codec.decompress_bytes(
        codec.compress_bytes(prose[:300], dictionary), 300, True, dictionary
    )
    assert back == prose[:300]
