"""The service's exception tree; the error interceptor maps each kind to one gRPC status.

    LLMCompressError                      INTERNAL (only if nothing narrower fits)
    ├── InvalidInput                      INVALID_ARGUMENT  bad text, mode, option or envelope bytes
    ├── DataLoss                          DATA_LOSS         decodes, but not to the original
    ├── PreconditionFailed                FAILED_PRECONDITION  needs a model/engine/format not here
    ├── CannotEncode                      FAILED_PRECONDITION  a codec cannot store this text as
    │                                                          asked; the pipeline falls back
    ├── Overloaded                        RESOURCE_EXHAUSTED   admission full; carries a retry hint
    ├── Unauthenticated                   UNAUTHENTICATED
    ├── DeadlineExceeded                  DEADLINE_EXCEEDED
    └── BackendError                      UNAVAILABLE       a model backend failed
        ├── BackendUnavailable            connection refused/reset, 503, cooldown
        ├── BackendTimeout                the backend did not answer in time
        ├── BackendProtocolError          garbage or an error line from the backend
        ├── ModelNotFound                 FAILED_PRECONDITION  the backend lacks the model
        └── ContextExceeded               FAILED_PRECONDITION  the prompt does not fit the
                                                               model's context window

Messages are for people: they say what went wrong and what to do about it.
"""

from __future__ import annotations

import grpc


class LLMCompressError(Exception):
    """Base of every error the service raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(LLMCompressError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DataLoss(LLMCompressError):
    code = grpc.StatusCode.DATA_LOSS


class NotFound(LLMCompressError):
    code = grpc.StatusCode.NOT_FOUND


class PreconditionFailed(LLMCompressError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class CannotEncode(LLMCompressError):
    """A codec cannot store this text in its mode (`reason` says why, for `stats.reason`).

    The pipeline catches it and walks the configured fallback chain; the caller
    sees FAILED_PRECONDITION only when no fallback is allowed.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Overloaded(LLMCompressError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthenticated(LLMCompressError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(LLMCompressError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class SharedStoreDown(LLMCompressError):
    """The Redis that replicas share is unreachable for a write that must reach it."""

    code = grpc.StatusCode.UNAVAILABLE


class BackendError(LLMCompressError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, endpoint: str = "", retryable: bool = True) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.retryable = retryable


class BackendUnavailable(BackendError):
    pass


class BackendTimeout(BackendError):
    pass


class BackendProtocolError(BackendError):
    pass


class ModelNotFound(BackendError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message, endpoint=endpoint, retryable=False)


class ContextExceeded(BackendError):
    """The prompt and its answer do not fit the model's context window: asking again
    cannot help (a Compress falls back; a Reconstruct needs a model with more context)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message, endpoint=endpoint, retryable=False)


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    """The status an exception answers with: its own code, or INTERNAL for anything else."""
    return exc.code if isinstance(exc, LLMCompressError) else grpc.StatusCode.INTERNAL
