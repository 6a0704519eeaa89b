"""llmcompress client: compress text with language models through the llmcompress service."""

from ._client import DEFAULT_TARGET, Client, CompressResult, ReconstructResult
from ._errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LLMCompressError,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_TARGET",
    "Client",
    "CompressResult",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LLMCompressError",
    "ReconstructResult",
    "ResourceExhausted",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
]
