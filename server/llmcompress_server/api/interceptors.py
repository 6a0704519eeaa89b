"""Server interceptors. `ErrorInterceptor` is the one place exceptions become statuses.

Domain errors map by their `code` (see core/errors.py); anything else is INTERNAL
with a generic message, and its traceback goes to the log, not the client.
Requests whose bytes do not decode (e.g. invalid UTF-8 in a string field)
get INVALID_ARGUMENT instead of grpc's opaque deserialization failure.
"""

from __future__ import annotations

import abc
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..core.domain import UndecodableRequest
from ..core.errors import InvalidInput, LLMCompressError, Overloaded

log = logging.getLogger(__name__)


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return parse


def _check(request: Any) -> None:
    if isinstance(request, UndecodableRequest):
        raise InvalidInput(
            "the request message cannot be parsed (string fields must be valid UTF-8): "
            f"{request.error}"
        )


def retry_trailers(exc: Overloaded) -> tuple[tuple[str, bytes | str], ...]:
    """google.rpc.RetryInfo in the status details, plus a plain `retry-after-ms` trailer."""
    delay = duration_pb2.Duration()
    delay.FromTimedelta(datetime.timedelta(seconds=exc.retry_after))
    detail = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc))
    detail.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return (
        ("grpc-status-details-bin", detail.SerializeToString()),
        ("retry-after-ms", str(int(exc.retry_after * 1000))),
    )


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if isinstance(exc, LLMCompressError):
        trailers = retry_trailers(exc) if isinstance(exc, Overloaded) else ()
        await context.abort(exc.code, str(exc), trailing_metadata=trailers)
    log.exception("unexpected error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


if TYPE_CHECKING:  # grpc's stubs make these generic; the runtime classes are not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler


class HandlerInterceptor(_ServerInterceptor):
    """The opening every interceptor here shares: resolve the method's handler, then `wrap` it."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED
            return handler
        return self.wrap(str(handler_call_details.method), handler)

    @abc.abstractmethod
    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler to run for `method` instead of `handler` (or `handler` itself)."""


def behaviour(handler: Handler) -> Any:
    """The handler's one coroutine function. grpc's stubs type it as a sync callable;
    in aio it is a coroutine (or an async generator, for streamed responses)."""
    return (
        handler.unary_unary or handler.stream_stream or handler.unary_stream or handler.stream_unary
    )


class ErrorInterceptor(HandlerInterceptor):
    """Maps every exception of a handler to its status (core/errors.py), once, for every RPC."""

    def wrap(self, method: str, handler: Handler) -> Handler:
        deserializer = _tolerant(handler.request_deserializer)
        inner = behaviour(handler)
        if handler.unary_unary is not None:

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    _check(request)
                    return await inner(request, context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await abort_for(exc, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for response in inner(requests, context):
                        yield response
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await abort_for(exc, context)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary is not None:

            async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    _check(request)
                    yield request

            async def stream_unary(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                try:
                    return await inner(checked(requests), context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await abort_for(exc, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                deserializer,
                handler.response_serializer,
            )
        return handler  # unary-stream: none in this service
