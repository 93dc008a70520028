"""The public face: stubs are fresh, every service is listed by reflection, enums start UNSPECIFIED."""

from __future__ import annotations

import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2
from threegen.imagegen.v1 import imagegen_pb2
from threegen.recon.v1 import recon_pb2
from threegen.render.v1 import render_pb2

MODULES = (common_pb2, imagegen_pb2, recon_pb2, render_pb2, gateway_pb2)


def test_committed_stubs_match_the_protos() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "threegen.protogen", "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_every_enum_starts_with_unspecified_and_packages_are_versioned() -> None:
    for module in MODULES:
        assert module.DESCRIPTOR.package.startswith("threegen.") and module.DESCRIPTOR.package.endswith(".v1")
        enums = list(module.DESCRIPTOR.enum_types_by_name.values())
        for message in module.DESCRIPTOR.message_types_by_name.values():
            enums.extend(message.enum_types)
        for enum in enums:
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.full_name


def test_reflection_lists_every_service(stack) -> None:
    expected = {
        stack.gateway: "threegen.gateway.v1.GatewayService",
        stack.imagegen: "threegen.imagegen.v1.ImageGenService",
        stack.recon: "threegen.recon.v1.ReconService",
        stack.render: "threegen.render.v1.RenderService",
    }
    for server, name in expected.items():
        with grpc.insecure_channel(server.address) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        with grpc.insecure_channel(server.address) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            described = db.FindFileContainingSymbol(name)
        assert described.package == name.rsplit(".", 1)[0]


def test_health_serving_for_the_server_and_each_service(stack) -> None:
    for server, name in (
        (stack.imagegen, "threegen.imagegen.v1.ImageGenService"),
        (stack.gateway, "threegen.gateway.v1.GatewayService"),
    ):
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", name):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
