"""gateway gRPC servicer: the public API. Thin: validation and orchestration live in pipeline.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from gateway.backends import Backends, call_metadata
from gateway.pipeline import GeneratePipeline
from gateway.settings import GatewaySettings
from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.imagegen.v1 import imagegen_pb2
from threegen.recon.v1 import recon_pb2
from threegen.runtime.server import Runtime, Service

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, runtime: Runtime, settings: GatewaySettings, state: dict):
        self.runtime = runtime
        self.settings = settings
        self.state = state

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        self.runtime.require_ready()
        pipeline: GeneratePipeline = self.state["pipeline"]
        ticket = self.runtime.enter()
        try:
            async for progress in self.runtime.queued_progress(ticket):
                yield gateway_pb2.GenerateResponse(progress=progress)
            async for response in pipeline.generate(request, context.time_remaining):
                yield response
        finally:
            ticket.release()

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        backends: Backends = self.state["backends"]
        calls = [
            backends.imagegen.ListModels(
                imagegen_pb2.ListModelsRequest(), timeout=5, metadata=call_metadata()
            ),
            backends.recon.ListModels(recon_pb2.ListModelsRequest(), timeout=5, metadata=call_metadata()),
        ]
        models = []
        replies = await asyncio.gather(*calls, return_exceptions=True)
        for name, reply in zip(("imagegen", "recon"), replies, strict=True):
            if isinstance(reply, BaseException):
                detail = reply.details() if isinstance(reply, grpc.RpcError) else str(reply)
                models.append(
                    common_pb2.ModelInfo(
                        name=name,
                        service=name,
                        state=common_pb2.MODEL_STATE_ERROR,
                        error=f"{name} unreachable: {detail}",
                    )
                )
            else:
                models.extend(reply.models)
        return gateway_pb2.ListModelsResponse(models=models)


def build(settings: GatewaySettings | None = None) -> Service:
    settings = settings or GatewaySettings.from_env()
    state: dict = {}

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        backends = Backends(settings)
        state["backends"] = backends
        state["pipeline"] = GeneratePipeline(backends, settings)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(runtime, settings, state), server
        )

    return Service(
        name="gateway",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=register,
        stage=common_pb2.STAGE_DELIVER,
    )
