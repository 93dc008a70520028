"""Errors that map to gRPC status codes, with google.rpc details where a client can use them.

Engines and servicers raise these; the server interceptor turns them into a rich status
(INVALID_ARGUMENT carries a google.rpc.BadRequest with one field violation per problem),
so a client in any language learns which field was wrong and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServiceError(Exception):
    """An error with a definite gRPC status code; its message goes to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> grpc.Status:
        proto = status_pb2.Status(code=self.code.value[0], message=self.message, details=self.details())
        return rpc_status.to_status(proto)


class InvalidArgument(ServiceError):
    """One or more request fields are wrong; each violation names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[tuple[str, str]] | str, field: str | None = None):
        if isinstance(violations, str):
            violations = [(field or "", violations)]
        self.violations = list(violations)
        message = "; ".join(f"{f}: {d}" if f else d for f, d in self.violations)
        super().__init__(message)

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(ServiceError):
    """The caller went away (cancelled or ran out of deadline); work stopped early."""

    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


class Violations:
    """Collects every field problem of a request so the client hears them all at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def in_range(self, value: float, low: float, high: float, field: str, what: str = "") -> bool:
        return self.check(
            low <= value <= high, field, f"{what or 'must be'} between {low:g} and {high:g}, got {value:g}"
        )

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def status_code_name(code: int) -> str:
    return code_pb2.Code.Name(code)


def field_violations(error: grpc.RpcError | grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """Client side: the (field, description) pairs carried by an INVALID_ARGUMENT status."""
    metadata: Iterable[tuple[str, str | bytes]] = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY:
            status = status_pb2.Status.FromString(value if isinstance(value, bytes) else value.encode())
            found = []
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    found.extend((v.field, v.description) for v in bad.field_violations)
            return found
    return []
