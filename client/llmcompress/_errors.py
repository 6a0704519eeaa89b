"""Client exceptions, one per gRPC status the service uses; each keeps the status.

LLMCompressError                 code, details, retry_after
├── InvalidArgument              INVALID_ARGUMENT    fix the request
├── DataLoss                     DATA_LOSS           the envelope is corrupt
├── FailedPrecondition           FAILED_PRECONDITION the server lacks a mode/model/engine/dictionary
├── NotFound                     NOT_FOUND           no dictionary of that name
├── ResourceExhausted            RESOURCE_EXHAUSTED  retried; retry_after from the server's hint
├── Unauthenticated              UNAUTHENTICATED     missing or wrong token
├── PermissionDenied             PERMISSION_DENIED
├── DeadlineExceeded             DEADLINE_EXCEEDED   the call's deadline passed
├── Unavailable                  UNAVAILABLE         retried; no server or backend down
├── Cancelled                    CANCELLED
└── ServerError                  INTERNAL and anything else

`from_rpc_error` maps a grpc.RpcError (unary or stream); `from_status` maps the
google.rpc.Status of one BatchCompress item.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

# grpc.aio's own status for a message written to a call whose connection broke a moment
# before (its cython layer's set_internal_error): a local transport failure, like
# UNAVAILABLE, not anything the server said. Seen when a replica dies mid-stream.
CORE_SEND_FAILURE = "Internal error from Core"


class LLMCompressError(Exception):
    """An RPC failed; `code` and `details` are the gRPC status, `retry_after` the
    server's retry hint in seconds (None when it gave none)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later: UNAVAILABLE (and grpc's local
        send failure, which is one), and RESOURCE_EXHAUSTED unless it is a
        message-size limit (grpc reports those with the same code)."""
        if self.code == grpc.StatusCode.UNAVAILABLE:
            return True
        if self.code == grpc.StatusCode.INTERNAL and self.details == CORE_SEND_FAILURE:
            return True
        return (
            self.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "message larger than max" not in self.details
        )


class InvalidArgument(LLMCompressError):
    """The request is wrong (text too large, unknown mode, bad option)."""


class DataLoss(LLMCompressError):
    """The envelope is corrupt or decodes to something else than the original."""


class FailedPrecondition(LLMCompressError):
    """The server cannot serve this (mode not offered, model or engine mismatch)."""


class NotFound(LLMCompressError):
    """The request names something the server does not hold (a dictionary)."""


class ResourceExhausted(LLMCompressError):
    """The server is at its admission limit; retry after `retry_after`."""


class Unauthenticated(LLMCompressError):
    """No valid bearer token was sent."""


class PermissionDenied(LLMCompressError):
    """The token is valid but not allowed to do this."""


class DeadlineExceeded(LLMCompressError):
    """The call's deadline passed before the server answered."""


class Unavailable(LLMCompressError):
    """No server answered at the target, or its model backend is down."""


class Cancelled(LLMCompressError):
    """The call was cancelled."""


class ServerError(LLMCompressError):
    """INTERNAL or any other status: a server fault (see its log)."""


_BY_CODE: dict[grpc.StatusCode, type[LLMCompressError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Cancelled,
}
_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def _retry_info(details: status_pb2.Status) -> float | None:
    for any_detail in details.details:
        info = error_details_pb2.RetryInfo()
        if any_detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def retry_hint(trailers: Any) -> float | None:
    """Seconds the server asked us to wait: google.rpc.RetryInfo in
    `grpc-status-details-bin` first, else the plain `retry-after-ms` trailer."""
    plain: float | None = None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                hinted = _retry_info(status_pb2.Status.FromString(value))
            except Exception:  # a malformed detail must not hide the real error
                hinted = None
            if hinted is not None:
                return hinted
        elif key == "retry-after-ms":
            try:
                plain = int(value) / 1000
            except (TypeError, ValueError):
                plain = None
    return plain


def from_rpc_error(err: grpc.RpcError) -> LLMCompressError:
    """The client exception for a failed call, keeping its status and retry hint."""
    code_fn = getattr(err, "code", None)
    code: grpc.StatusCode = code_fn() if code_fn else grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    details: str = (details_fn() if details_fn else None) or str(err)
    trailers_fn = getattr(err, "trailing_metadata", None)
    trailers = trailers_fn() if trailers_fn else None
    cls = _BY_CODE.get(code, ServerError)
    return cls(code, details, retry_hint(trailers))


def from_status(status: status_pb2.Status) -> LLMCompressError:
    """The client exception for one BatchCompress item's google.rpc.Status."""
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, ServerError)(code, status.message, _retry_info(status))
