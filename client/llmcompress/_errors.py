"""Client exceptions, one per gRPC status the service uses; each keeps the status.

LLMCompressError
├── InvalidArgument       INVALID_ARGUMENT
├── DataLoss              DATA_LOSS
├── FailedPrecondition    FAILED_PRECONDITION
├── ResourceExhausted     RESOURCE_EXHAUSTED (retry_after from the server's hint)
├── Unauthenticated       UNAUTHENTICATED
├── DeadlineExceeded      DEADLINE_EXCEEDED
├── Unavailable           UNAVAILABLE
└── ServerError           INTERNAL and anything else
"""

from __future__ import annotations

import grpc


class LLMCompressError(Exception):
    """An RPC failed; `code` and `details` are the gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after: float | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retry_after = retry_after


class InvalidArgument(LLMCompressError):
    pass


class DataLoss(LLMCompressError):
    pass


class FailedPrecondition(LLMCompressError):
    pass


class ResourceExhausted(LLMCompressError):
    pass


class Unauthenticated(LLMCompressError):
    pass


class DeadlineExceeded(LLMCompressError):
    pass


class Unavailable(LLMCompressError):
    pass


class ServerError(LLMCompressError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[LLMCompressError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def _retry_after(err: grpc.RpcError) -> float | None:
    trailers = getattr(err, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except (TypeError, ValueError):
                return None
    return None


def from_rpc_error(err: grpc.RpcError) -> LLMCompressError:
    code: grpc.StatusCode = err.code()
    details: str = err.details() or ""
    cls = _BY_CODE.get(code, ServerError)
    return cls(code, details, _retry_after(err))
