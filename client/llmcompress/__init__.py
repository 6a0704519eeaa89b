"""llmcompress client: compress text with language models through the llmcompress service.

from llmcompress import Client, Mode
with Client("127.0.0.1:50051") as client:
    result = client.compress("some text", Mode.ZSTD)
    assert client.reconstruct(result.envelope).text == "some text"
"""

from ._async_client import AsyncClient
from ._client import DEFAULT_TARGET, Client
from ._dictionaries import DictionaryInfo
from ._errors import (
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LLMCompressError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from ._options import TLS, RetryPolicy
from ._results import (
    BatchItem,
    BatchResult,
    CacheStats,
    CompressResult,
    CompressStats,
    Mode,
    ModelUsage,
    Progress,
    Quality,
    ReconstructResult,
    ServerStats,
    StageStats,
    StageTiming,
)

__all__ = [
    "DEFAULT_TARGET",
    "TLS",
    "AsyncClient",
    "BatchItem",
    "BatchResult",
    "CacheStats",
    "Cancelled",
    "Client",
    "CompressResult",
    "CompressStats",
    "DataLoss",
    "DeadlineExceeded",
    "DictionaryInfo",
    "FailedPrecondition",
    "InvalidArgument",
    "LLMCompressError",
    "Mode",
    "ModelUsage",
    "NotFound",
    "PermissionDenied",
    "Progress",
    "Quality",
    "ReconstructResult",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerError",
    "ServerStats",
    "StageStats",
    "StageTiming",
    "Unauthenticated",
    "Unavailable",
]
