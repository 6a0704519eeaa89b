"""The synchronous client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import grpc

from llmcompress_server.pb import compression_pb2 as pb
from llmcompress_server.pb import compression_pb2_grpc as pb_grpc

from ._errors import from_rpc_error

ModeName = Literal["zstd", "lossless", "semantic", "default"]
_MODES: dict[str, int] = {
    "default": pb.MODE_UNSPECIFIED,
    "zstd": pb.MODE_ZSTD,
    "lossless": pb.MODE_LOSSLESS,
    "semantic": pb.MODE_SEMANTIC,
}
DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class CompressResult:
    envelope: bytes
    stats: pb.Stats

    @property
    def ratio(self) -> float:
        return self.stats.ratio


@dataclass(frozen=True)
class ReconstructResult:
    text: str
    exact: bool
    response: pb.ReconstructResponse


class Client:
    """Blocking client for CompressionService."""

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = 300.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.CompressionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def compress(
        self, text: str, mode: ModeName = "default", *, verify: bool | None = None
    ) -> CompressResult:
        req = pb.CompressRequest(text=text, mode=_MODES[mode])  # type: ignore[arg-type]
        if verify is not None:
            req.verify = verify
        try:
            resp = self._stub.Compress(req, timeout=self.timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return CompressResult(resp.envelope, resp.stats)

    def reconstruct(self, envelope: bytes) -> ReconstructResult:
        try:
            resp = self._stub.Reconstruct(
                pb.ReconstructRequest(envelope=envelope), timeout=self.timeout
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return ReconstructResult(resp.text, resp.exact, resp)

    def stats(self, window_seconds: float = 0.0) -> pb.GetStatsResponse:
        try:
            return self._stub.GetStats(
                pb.GetStatsRequest(window_seconds=window_seconds), timeout=self.timeout
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
