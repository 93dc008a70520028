"""Channels to the backend services: client-side balancing, retries, deadlines, request ids.

A backend error comes back to our client with the same status code and, for
INVALID_ARGUMENT, with its field paths rewritten to the gateway request's fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc

from gateway.settings import GatewaySettings
from threegen.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    field_violations,
)
from threegen.imagegen.v1 import imagegen_pb2_grpc
from threegen.logs import REQUEST_ID, REQUEST_ID_HEADER
from threegen.recon.v1 import recon_pb2_grpc
from threegen.render.v1 import render_pb2_grpc

RETRY_BUFFER_BYTES = 64 * 1024 * 1024


def service_config(service: str, attempts: int) -> str:
    """round_robin over every address the name resolves to, retry UNAVAILABLE with backoff."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": service}],
                    "retryPolicy": {
                        "maxAttempts": attempts,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def open_channel(address: str, service: str, attempts: int) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config(service, attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.retry_buffer_size", RETRY_BUFFER_BYTES * 4),
        ("grpc.keepalive_time_ms", 30000),
    ]
    return grpc.aio.insecure_channel(address, options=options)


def call_metadata() -> tuple[tuple[str, str], ...]:
    request_id = REQUEST_ID.get()
    return ((REQUEST_ID_HEADER, request_id),) if request_id else ()


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def translate(error: grpc.aio.AioRpcError, backend: str, rename: Callable[[str], str]) -> ServiceError:
    """A backend's failure as our own error; field paths renamed into the gateway request."""
    code = error.code()
    details = error.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = field_violations(error) or [("", details)]
        return InvalidArgument([(rename(f), d) for f, d in violations])
    cls = _BY_CODE.get(code)
    if cls is None:
        return Internal(f"{backend} failed ({code.name}): {details}")
    return cls(f"{backend}: {details}")


class Backends:
    def __init__(self, settings: GatewaySettings):
        attempts = settings.backend_retries
        self.channels = {
            "imagegen": open_channel(
                settings.imagegen_address, "threegen.imagegen.v1.ImageGenService", attempts
            ),
            "recon": open_channel(settings.recon_address, "threegen.recon.v1.ReconService", attempts),
            "render": open_channel(settings.render_address, "threegen.render.v1.RenderService", attempts),
        }
        self.imagegen = imagegen_pb2_grpc.ImageGenServiceStub(self.channels["imagegen"])
        self.recon = recon_pb2_grpc.ReconServiceStub(self.channels["recon"])
        self.render = render_pb2_grpc.RenderServiceStub(self.channels["render"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
