"""Exit 0 if a threegen service reports SERVING on grpc.health.v1 (container HEALTHCHECK)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-ca", default="", help="PEM CA bundle when the service serves TLS")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    target = f"{args.host}:{args.port}"
    if args.tls_ca:
        with open(args.tls_ca, "rb") as handle:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(handle.read()))
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout
            )
    except grpc.RpcError as error:
        print(f"unhealthy: {error.code().name} {error.details()}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
