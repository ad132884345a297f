"""Undecodable requests are refused with INVALID_ARGUMENT, like any other bad input.

grpc decodes a request before any handler runs. Bytes that are no message of the method's type (a corrupt wire
format, a string field that is not UTF-8) would end a unary call as UNKNOWN and, inside a stream, surface in the
servicer as an unexpected exception, i.e. INTERNAL with a logged traceback: a client's mistake reported as the
server's bug. This interceptor takes the decoding over: the handler's requests arrive as bytes, are decoded here,
and a failure aborts the call with INVALID_ARGUMENT naming the message type and what was wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc


class DecodeRequests(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _decoding(handler, handler.request_deserializer)


async def _decode(decode: Callable[[bytes], Any], raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return decode(raw)
    except Exception as error:  # DecodeError, or anything else that means the bytes are no such message
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {error}")


async def _results(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's answers, whether it is an async generator, a sync one, or writes to its context."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    else:
        for item in result:
            yield item


def _decoding(handler: Any, decode: Callable[[bytes], Any]) -> Any:
    async def requests(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for message in raw:
            yield await _decode(decode, message, context)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            result = inner_uu(await _decode(decode, raw, context), context)
            return await result if inspect.isawaitable(result) else result

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in _results(inner_us(await _decode(decode, raw, context), context)):
                yield item

        return handler._replace(request_deserializer=None, unary_stream=unary_stream)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            result = inner_su(requests(raw, context), context)
            return await result if inspect.isawaitable(result) else result

        return handler._replace(request_deserializer=None, stream_unary=stream_unary)
    inner_ss = handler.stream_stream

    async def stream_stream(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in _results(inner_ss(requests(raw, context), context)):
            yield item

    return handler._replace(request_deserializer=None, stream_stream=stream_stream)
