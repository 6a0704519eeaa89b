"""The bad-input and fault catalog: one row per case, each with the exact status it must get.

A row is `Case(name, run, expect)`: `run(caller)` performs the calls and returns
the status code it observed (OK when the call succeeded). The test runs every
row against ONE server and, after each, checks that a normal Compress +
Reconstruct still round-trips. `BACKEND_CASES` are the faults of the model
backend (the simulated Ollama) and of Redis: each runs a SEMANTIC Compress on a
server with `llm.allow_degraded` off (the exact status) and on (a degraded ZSTD
envelope with the reason), then checks SEMANTIC works again once the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from llmcompress.v1 import compression_pb2 as pb
from llmcompress.v1 import compression_pb2_grpc as pb_grpc
from llmcompress_server.api.server import App
from llmcompress_server.backends.router import BackendRouter
from llmcompress_server.core.envelope import FORMAT_VERSION

from ..conftest import format1_zstd_envelope, slow_text
from ..sim_ollama import SimOllama

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DATA_LOSS = grpc.StatusCode.DATA_LOSS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

# The catalog server's limits (see test_catalog.py): small, so the limits are cheap to hit.
MAX_TEXT = 1024 * 1024
MAX_MESSAGE = 2 * 1024 * 1024
MAX_QUEUE = 3
SAMPLE = "Reliability sample: the server must keep serving after every bad call. " * 6


@dataclass
class Caller:
    """What a row needs: the stub, the server (for its admission counter) and auth metadata."""

    app: App
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]
    _envelope: bytes = field(default=b"", repr=False)

    @property
    def stub(self) -> pb_grpc.CompressionServiceStub:
        return pb_grpc.CompressionServiceStub(self.channel)

    def compress(self, text: str, **fields: Any) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        fields.setdefault("mode", pb.MODE_ZSTD)
        request = pb.CompressRequest(text=text, **fields)
        return self.stub.Compress(request, metadata=self.metadata)

    def reconstruct(self, envelope: bytes) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        request = pb.ReconstructRequest(envelope=envelope)
        return self.stub.Reconstruct(request, metadata=self.metadata)

    async def raw(self, method: str, payload: bytes) -> grpc.StatusCode:
        """Send bytes no generated stub would produce (e.g. invalid UTF-8 in a string)."""
        call = self.channel.unary_unary(
            f"/llmcompress.v1.CompressionService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        return await observed(call(payload, metadata=self.metadata))

    async def envelope(self) -> bytes:
        if not self._envelope:
            self._envelope = (await self.compress(SAMPLE)).envelope
        return self._envelope

    def legacy(self) -> bytes:
        """The sample as a format-1 ZSTD envelope, as servers wrote them before format 4;
        they stay readable, so their header faults stay mapped."""
        return format1_zstd_envelope(SAMPLE.encode())

    async def edited(self, **fields: Any) -> bytes:
        """The format-1 sample envelope with header fields overwritten (format 4's ZSTD
        envelope has none of them: its frame holds the length and checksum)."""
        env = pb.Envelope.FromString(self.legacy())
        for name, value in fields.items():
            setattr(env, name, value)
        return env.SerializeToString()

    async def wait_active(self, n: int, within: float = 10.0) -> None:
        """Until `n` calls hold admission slots: no sleeps that race the server."""
        admission = self.app.pipeline.admission
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while admission.active != n:
            if loop.time() > end:
                raise AssertionError(f"admission.active stayed {admission.active}, wanted {n}")
            await asyncio.sleep(0.005)


async def observed(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


Run = Callable[[Caller], Awaitable[grpc.StatusCode]]


@dataclass(frozen=True)
class Case:
    name: str
    run: Run
    expect: grpc.StatusCode


def compress_case(name: str, text: str, expect: grpc.StatusCode, **fields: Any) -> Case:
    async def run(c: Caller) -> grpc.StatusCode:
        try:
            resp = await c.compress(text, **fields)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        back = await c.reconstruct(resp.envelope)
        # An accepted odd text must come back byte for byte.
        assert back.text == text and back.exact, name
        return OK

    return Case(name, run, expect)


def envelope_case(
    name: str, make: Callable[[Caller], Awaitable[bytes]], expect: grpc.StatusCode
) -> Case:
    async def run(c: Caller) -> grpc.StatusCode:
        return await observed(c.reconstruct(await make(c)))

    return Case(name, run, expect)


async def _const(data: bytes) -> bytes:
    return data


async def _flip_at(c: Caller, offset: int) -> bytes:
    data = bytearray(c.legacy())
    data[offset] ^= 0x01
    return bytes(data)


async def _flip(c: Caller, offset_from_end: int, bit: int = 0) -> bytes:
    data = bytearray(await c.envelope())
    data[len(data) - offset_from_end] ^= 1 << bit
    return bytes(data)


async def _every_truncation(c: Caller) -> grpc.StatusCode:
    env = await c.envelope()
    codes = {await observed(c.reconstruct(env[:n])) for n in range(1, len(env))}
    assert len(codes) == 1, f"truncations gave {codes}"
    return codes.pop()


async def _truncated(c: Caller, keep: float) -> bytes:
    env = await c.envelope()
    return env[: max(1, int(len(env) * keep))]


async def _frame(c: Caller, frame: bytes, length: int | None = None) -> bytes:
    env = pb.Envelope.FromString(await c.envelope())
    env.zstd.frame = frame
    if length is not None:
        env.original_length = length
    return env.SerializeToString()


async def _dictionary(c: Caller) -> bytes:
    env = pb.Envelope.FromString(await c.envelope())
    env.dictionary = 0x0BADD1C7
    return env.SerializeToString()


async def _foreign(c: Caller) -> bytes:
    # A valid protobuf of another type: parses, but is no envelope.
    return pb.CompressRequest(text="not an envelope", mode=pb.MODE_ZSTD).SerializeToString()


async def _mode_body_mismatch(c: Caller) -> bytes:
    return await c.edited(mode=pb.MODE_LOSSLESS)


async def _no_body(c: Caller) -> bytes:
    env = pb.Envelope.FromString(await c.envelope())
    env.ClearField("zstd")
    return env.SerializeToString()


async def _zstd_of_non_utf8(c: Caller, compact: bool = False) -> bytes:
    import zstandard

    from llmcompress_server.core.envelope import text_hash

    raw = b"\xff\xfe not utf-8 \xc3"
    if compact:  # a format-4 frame, its size and checksum right
        params = zstandard.ZstdCompressionParameters.from_level(
            3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=True
        )
        frame = zstandard.ZstdCompressor(compression_params=params).compress(raw)
        return pb.Envelope(version=4, zstd=pb.ZstdBody(frame=frame)).SerializeToString()
    env = pb.Envelope.FromString(c.legacy())
    env.zstd.frame = zstandard.ZstdCompressor().compress(raw)
    env.original_length = len(raw)
    env.original_hash = text_hash(raw)  # checksum right, so only the UTF-8 check can catch it
    return env.SerializeToString()


async def _compact_frame_without_checksum(c: Caller) -> bytes:
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=False
    )
    frame = zstandard.ZstdCompressor(compression_params=params).compress(SAMPLE.encode())
    return await _frame(c, frame)


def _invalid_utf8_request() -> bytes:
    # CompressRequest{text (field 1, length-delimited) = b"\xff\xfe"}: invalid UTF-8.
    return b"\x0a\x02\xff\xfe"


async def _deadline(c: Caller) -> grpc.StatusCode:
    text = slow_text(MAX_TEXT - 1024)
    call = c.stub.Compress(
        pb.CompressRequest(text=text, mode=pb.MODE_ZSTD), metadata=c.metadata, timeout=0.05
    )
    code = await observed(call)
    await c.wait_active(0)  # the server let go of the expired call
    return code


async def _cancel(c: Caller) -> grpc.StatusCode:
    call = c.compress(slow_text(MAX_TEXT - 1024, seed=2))
    await c.wait_active(1)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # grpc.aio raises it for a cancelled call
        await call
    await c.wait_active(0)
    return await call.code()


async def _overload(c: Caller) -> grpc.StatusCode:
    # Big enough to stay in flight until all are counted (admission is polled, not slept on).
    texts = [slow_text(MAX_TEXT // 8, seed=10 + i) for i in range(MAX_QUEUE)]
    busy = [asyncio.ensure_future(c.compress(t)) for t in texts]
    try:
        await c.wait_active(MAX_QUEUE)
        refused = c.compress(SAMPLE)
        code = await observed(refused)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            trailers = dict(await refused.trailing_metadata() or ())
            assert int(trailers["retry-after-ms"]) > 0
    finally:
        results = await asyncio.gather(*busy)
    assert [r.stats.original_bytes for r in results] == [len(t.encode()) for t in texts]
    return code


async def _batch_with_bad_items(c: Caller) -> grpc.StatusCode:
    items = [
        pb.BatchCompressRequest(id="good", request=pb.CompressRequest(text=SAMPLE, mode=3)),
        pb.BatchCompressRequest(id="bad-mode", request=pb.CompressRequest(text=SAMPLE, mode=42)),  # type: ignore[arg-type]
        pb.BatchCompressRequest(
            id="bad-ratio", request=pb.CompressRequest(text=SAMPLE, target_ratio=0.5)
        ),
        pb.BatchCompressRequest(
            id="too-big", request=pb.CompressRequest(text="x" * (MAX_TEXT + 1), mode=3)
        ),
    ]
    answers = {r.id: r async for r in c.stub.BatchCompress(iter(items), metadata=c.metadata)}
    assert set(answers) == {"good", "bad-mode", "bad-ratio", "too-big"}, "an item was lost"
    assert answers["good"].HasField("result")
    for bad in ("bad-mode", "bad-ratio", "too-big"):
        assert answers[bad].error.code == INVALID.value[0], bad
    return OK


async def _unknown_method(c: Caller) -> grpc.StatusCode:
    return await c.raw("Decompress", b"")


def _auth_case(name: str, metadata: tuple[tuple[str, str], ...]) -> Case:
    async def run(c: Caller) -> grpc.StatusCode:
        request = pb.CompressRequest(text=SAMPLE, mode=pb.MODE_ZSTD)
        return await observed(c.stub.Compress(request, metadata=metadata))

    return Case(name, run, grpc.StatusCode.UNAUTHENTICATED)


async def _raw_compress(c: Caller, payload: bytes) -> grpc.StatusCode:
    return await c.raw("Compress", payload)


CASES: list[Case] = [
    # -- texts ---------------------------------------------------------------------
    compress_case("empty text", "", OK),
    compress_case("whitespace only", " \n\t ", OK),
    compress_case("NUL bytes", "a\x00b\x00\x00c" * 50, OK),
    compress_case("control and binary-ish chars", "".join(map(chr, range(1, 32))) * 20, OK),
    compress_case("astral-plane and combining chars", "🙂e\u0301\U0010fffd" * 100, OK),
    compress_case("text one byte over max_text_bytes", "x" * (MAX_TEXT + 1), INVALID),
    compress_case(
        "message over max_message_bytes",
        "x" * (MAX_MESSAGE + 1),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    Case("invalid UTF-8 on the wire", lambda c: _raw_compress(c, _invalid_utf8_request()), INVALID),
    Case("request bytes that are not protobuf", lambda c: _raw_compress(c, b"\xff" * 16), INVALID),
    # -- options -------------------------------------------------------------------
    compress_case("unknown mode", SAMPLE, INVALID, mode=42),
    compress_case("negative mode", SAMPLE, INVALID, mode=-1),
    compress_case("unknown quality", SAMPLE, INVALID, quality=9),
    compress_case("target_ratio below 1", SAMPLE, INVALID, target_ratio=0.5),
    compress_case("target_ratio exactly 1", SAMPLE, INVALID, target_ratio=1.0),
    compress_case("target_ratio NaN", SAMPLE, INVALID, target_ratio=math.nan),
    compress_case("target_ratio infinite", SAMPLE, INVALID, target_ratio=math.inf),
    compress_case("target_ratio negative", SAMPLE, INVALID, target_ratio=-3.0),
    # -- envelopes -----------------------------------------------------------------
    envelope_case("empty envelope", lambda c: _const(b""), INVALID),
    Case("envelope truncated at every length", _every_truncation, INVALID),
    envelope_case("envelope truncated to 1 byte", lambda c: _truncated(c, 0.0), INVALID),
    envelope_case("envelope truncated to half", lambda c: _truncated(c, 0.5), INVALID),
    envelope_case("bit flip in the zstd frame's last byte", lambda c: _flip(c, 1), DATA_LOSS),
    envelope_case("bit flip in the magic", lambda c: _flip_at(c, 1), INVALID),
    envelope_case("foreign protobuf", _foreign, INVALID),
    envelope_case("random bytes", lambda c: _const(b"\xff" * 32), INVALID),
    envelope_case("wrong magic", lambda c: c.edited(magic=0x12345678), INVALID),
    envelope_case(
        "newer format version", lambda c: c.edited(version=FORMAT_VERSION + 1), PRECONDITION
    ),
    envelope_case("no format version", lambda c: c.edited(version=0), INVALID),
    envelope_case("unknown mode in envelope", lambda c: c.edited(mode=7), INVALID),
    envelope_case("mode/body mismatch", _mode_body_mismatch, INVALID),
    envelope_case("no body", _no_body, INVALID),
    envelope_case("huge claimed length", lambda c: c.edited(original_length=2**40), PRECONDITION),
    envelope_case("claimed length too short", lambda c: c.edited(original_length=5), DATA_LOSS),
    envelope_case(
        "claimed length too long", lambda c: c.edited(original_length=len(SAMPLE) + 1), DATA_LOSS
    ),
    envelope_case("wrong hash", lambda c: c.edited(original_hash=12345), DATA_LOSS),
    envelope_case(
        "zstd garbage frame", lambda c: _frame(c, b"\x28\xb5\x2f\xfd garbage"), DATA_LOSS
    ),
    envelope_case("not a zstd frame", lambda c: _frame(c, b"plain text, no zstd"), DATA_LOSS),
    envelope_case("empty frame, nonzero length", lambda c: _frame(c, b""), DATA_LOSS),
    envelope_case("frame decodes to invalid UTF-8", _zstd_of_non_utf8, DATA_LOSS),
    envelope_case(
        "compact frame decodes to invalid UTF-8",
        lambda c: _zstd_of_non_utf8(c, compact=True),
        DATA_LOSS,
    ),
    envelope_case("compact frame without its checksum", _compact_frame_without_checksum, DATA_LOSS),
    envelope_case(
        "names a corpus dictionary this server lacks",
        lambda c: _dictionary(c),
        PRECONDITION,
    ),
    # -- calls ---------------------------------------------------------------------
    Case("deadline exceeded", _deadline, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case("client cancels mid-call", _cancel, grpc.StatusCode.CANCELLED),
    Case("overload beyond max_queue", _overload, grpc.StatusCode.RESOURCE_EXHAUSTED),
    Case("batch with bad items answers each id", _batch_with_bad_items, OK),
    Case("unknown method", _unknown_method, grpc.StatusCode.UNIMPLEMENTED),
    # -- auth ----------------------------------------------------------------------
    _auth_case("no token", ()),
    _auth_case("wrong token", (("authorization", "Bearer nope"),)),
    _auth_case("not a bearer header", (("authorization", "Basic dXNlcjpwYXNz"),)),
    _auth_case("empty bearer", (("authorization", "Bearer "),)),
]


# -- the model backend and Redis ---------------------------------------------------------
# The backend servers (see test_catalog.py) retry once (llm.max_retries=1) and give a
# model call llm.timeout=BACKEND_TIMEOUT; no breaker cooldown, so rows do not leak.
BACKEND_TIMEOUT = 0.5
BACKEND_RETRIES = 1
# The router tries each of the three model tiers, each with the pool's retries.
ATTEMPTS = 3 * (BACKEND_RETRIES + 1)


@dataclass
class BackendCaller:
    """A SEMANTIC request to a server over the simulated Ollama `sim`."""

    app: App
    channel: grpc.aio.Channel
    sim: SimOllama
    allow_degraded: bool

    async def semantic(self, text: str = SAMPLE) -> pb.CompressResponse | grpc.aio.AioRpcError:
        stub = pb_grpc.CompressionServiceStub(self.channel)
        try:
            return await stub.Compress(
                pb.CompressRequest(text=text, mode=pb.MODE_SEMANTIC), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            return exc


@dataclass(frozen=True)
class BackendCase:
    name: str
    # Sets the fault up; returns the undo (or None).
    fault: Callable[[BackendCaller], Awaitable[Callable[[], Awaitable[None]] | None]]
    # Without allow_degraded: the status and a phrase of its message.
    expect: grpc.StatusCode
    says: str
    # Whether the row needs the server that streams (model.ollama.stream).
    stream: bool = False


def _script(*faults: str) -> Callable[[BackendCaller], Awaitable[None]]:
    async def fault(c: BackendCaller) -> None:
        c.sim.options.script = list(faults)

    return fault


async def _down(c: BackendCaller) -> Callable[[], Awaitable[None]]:
    port = c.sim.port
    await c.sim.close()  # nothing listens there now: connection refused

    async def undo() -> None:
        await c.sim.start(port)

    return undo


async def _slow(c: BackendCaller) -> Callable[[], Awaitable[None]]:
    c.sim.options.latency = BACKEND_TIMEOUT * 4

    async def undo() -> None:
        c.sim.options.latency = 0.01

    return undo


async def _model_missing(c: BackendCaller) -> Callable[[], Awaitable[None]]:
    models = c.sim.options.models
    c.sim.options.models = ("some-other-model",)

    async def undo() -> None:
        c.sim.options.models = models  # "pulled": the next health probe notices
        assert isinstance(c.app.backend, BackendRouter)
        for route in c.app.backend.routes:
            await route.pool.probe()

    return undo


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

BACKEND_CASES: list[BackendCase] = [
    BackendCase("backend down (connection refused)", _down, UNAVAILABLE, "cannot reach"),
    BackendCase("backend slower than llm.timeout", _slow, UNAVAILABLE, "did not answer within"),
    BackendCase("backend 503 on every attempt", _script(*["503"] * ATTEMPTS), UNAVAILABLE, "503"),
    BackendCase("backend 500", _script(*["error"] * ATTEMPTS), UNAVAILABLE, "500"),
    BackendCase(
        "backend answers garbage JSON", _script(*["garbage"] * ATTEMPTS), UNAVAILABLE, "JSON"
    ),
    BackendCase(
        "backend error line mid-stream",
        _script(*["error"] * ATTEMPTS),
        UNAVAILABLE,
        "llama runner process has terminated",
        stream=True,
    ),
    BackendCase(
        "backend resets the connection", _script(*["drop"] * ATTEMPTS), UNAVAILABLE, "disconnect"
    ),
    BackendCase("backend lacks the model", _model_missing, UNAVAILABLE, "pull it"),
]
