"""Server interceptor: request ids, logs, metrics and exception -> status mapping for every RPC."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from threegen.errors import Internal, InvalidArgument, ResourceExhausted, ServiceError, Unauthenticated
from threegen.logs import REQUEST_ID, REQUEST_ID_HEADER, new_request_id
from threegen.runtime import metrics

log = logging.getLogger("threegen.rpc")

_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _as_service_error(exc: BaseException) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    # Out-of-memory on the accelerator is overload, not a bug; match by name so the
    # runtime does not import torch.
    if type(exc).__name__ in ("OutOfMemoryError", "OutOfResources"):
        return ResourceExhausted(f"accelerator out of memory: {str(exc).splitlines()[0][:200]}")
    return Internal(f"internal error (request id {REQUEST_ID.get()}); the details are in the server log")


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse, so it becomes INVALID_ARGUMENT
    (grpc would otherwise answer INTERNAL "Exception deserializing request")."""

    message_type: str
    error: str

    def raise_error(self) -> None:
        raise InvalidArgument([("request", f"not a valid {self.message_type}: {self.error}")])


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "message"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return Malformed(name, str(exc) or type(exc).__name__)

    return parse


def _checked(request: Any, streaming: bool) -> Any:
    """The request, or for client streams an iterator that raises at a malformed message."""
    if not streaming:
        if isinstance(request, Malformed):
            request.raise_error()
        return request

    async def messages() -> AsyncIterator[Any]:
        async for message in request:
            if isinstance(message, Malformed):
                message.raise_error()
            yield message

    return messages()


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return new_request_id()


def _authorised(context: grpc.aio.ServicerContext, keys: tuple[str, ...]) -> bool:
    """An `authorization: Bearer KEY` (or `x-api-key: KEY`) header naming one of the keys."""
    for name, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if name == "authorization" and value[:7].lower() == "bearer ":
            offered = value[7:].strip()
        elif name == "x-api-key":
            offered = value.strip()
        else:
            continue
        if any(hmac.compare_digest(offered.encode(), key.encode()) for key in keys):
            return True
    return False


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, api_keys: tuple[str, ...] = ()):
        self.service = service
        self.api_keys = api_keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_QUIET_PREFIXES):
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, streaming=False),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, streaming=False),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, streaming=True),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method, streaming=True),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )

    def _begin(self, context: grpc.aio.ServicerContext) -> Any:
        return REQUEST_ID.set(_request_id(context))

    def _check_key(self, context: grpc.aio.ServicerContext) -> None:
        if self.api_keys and not _authorised(context, self.api_keys):
            raise Unauthenticated("missing or invalid API key: send 'authorization: Bearer <key>'")

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
        error = _as_service_error(exc)
        if isinstance(error, Internal):
            log.error("unhandled error in %s", method, exc_info=exc)
        await context.abort(error.code, error.message, trailing_metadata=error.to_status().trailing_metadata)

    def _finish(self, method: str, code: grpc.StatusCode, started: float, token: Any) -> None:
        seconds = time.perf_counter() - started
        metrics.observe_rpc(self.service, method, code.name, seconds)
        level = logging.INFO if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) else logging.WARNING
        log.log(
            level,
            "rpc %s %s",
            method,
            code.name,
            extra={"method": method, "code": code.name, "seconds": round(seconds, 4)},
        )
        REQUEST_ID.reset(token)

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str, streaming: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = self._begin(context)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                self._check_key(context)
                return await behavior(_checked(request, streaming), context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = _as_service_error(exc).code
                await self._fail(context, exc, method)
            finally:
                self._finish(method, code, started, token)

        return wrapped

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str, streaming: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = self._begin(context)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                self._check_key(context)
                await context.send_initial_metadata(((REQUEST_ID_HEADER, REQUEST_ID.get()),))
                async for response in behavior(_checked(request, streaming), context):
                    yield response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = _as_service_error(exc).code
                await self._fail(context, exc, method)
            finally:
                self._finish(method, code, started, token)

        return wrapped
