"""Channels to the backend services: client-side balancing, retries, deadlines, request ids.

A backend error comes back to our client with the same status code and, for
INVALID_ARGUMENT, with its field paths rewritten to the gateway request's fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc

from gateway.settings import FAMILY_BY_NAME, GatewaySettings
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


def channel_credentials(settings: GatewaySettings) -> grpc.ChannelCredentials | None:
    """TLS to the backends when a CA is configured (plus a client certificate for mTLS)."""
    if not settings.backend_tls_ca:
        return None

    def read(path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    key = read(settings.backend_tls_key) if settings.backend_tls_key else None
    cert = read(settings.backend_tls_cert) if settings.backend_tls_cert else None
    return grpc.ssl_channel_credentials(
        read(settings.backend_tls_ca), private_key=key, certificate_chain=cert
    )


def open_channel(
    address: str,
    service: str,
    attempts: int,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = "",
) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config(service, attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.retry_buffer_size", RETRY_BUFFER_BYTES * 4),
        ("grpc.keepalive_time_ms", 30000),
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, credentials, options=options)


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
        tls = channel_credentials(settings)
        name = settings.backend_tls_server_name
        targets = {
            "imagegen": (settings.imagegen_address, "threegen.imagegen.v1.ImageGenService"),
            "recon": (settings.recon_address, "threegen.recon.v1.ReconService"),
            "render": (settings.render_address, "threegen.render.v1.RenderService"),
        }
        self.channels = {
            backend: open_channel(address, service, attempts, tls, name)
            for backend, (address, service) in targets.items()
        }
        self.imagegen = imagegen_pb2_grpc.ImageGenServiceStub(self.channels["imagegen"])
        self.recon = recon_pb2_grpc.ReconServiceStub(self.channels["recon"])
        self.render = render_pb2_grpc.RenderServiceStub(self.channels["render"])
        # One recon image per family: each routed family gets its own channel and stub.
        self.recon_routes: dict[int, recon_pb2_grpc.ReconServiceStub] = {}
        for family, address in settings.routes().items():
            channel = open_channel(address, "threegen.recon.v1.ReconService", attempts, tls, name)
            self.channels[f"recon-{family}"] = channel
            self.recon_routes[FAMILY_BY_NAME[family]] = recon_pb2_grpc.ReconServiceStub(channel)

    def recon_deployments(self) -> list[tuple[int | None, recon_pb2_grpc.ReconServiceStub]]:
        """Every recon deployment: (the family it is routed for, None for the default one; stub)."""
        return [(None, self.recon), *self.recon_routes.items()]

    def speaks_for(self, family: int | None, model: object) -> bool:
        """Whether a model a recon deployment lists counts: a routed deployment describes its
        family only; the default one every family not routed elsewhere."""
        listed = model.family  # type: ignore[attr-defined]
        return listed == family if family is not None else listed not in self.recon_routes

    def recon_for(self, family: int) -> recon_pb2_grpc.ReconServiceStub:
        """The recon deployment serving `family` (unset: the default deployment's own default)."""
        return self.recon_routes.get(family, self.recon)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
