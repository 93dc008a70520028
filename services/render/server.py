"""render gRPC servicer: validates, admits, renders/exports in a worker, streams artifacts back."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import grpc

from services.render.gl import choose_platform
from services.render.params import validate_options
from services.render.settings import RenderSettings
from threegen.chunks import iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument, Violations
from threegen.render.v1 import render_pb2, render_pb2_grpc
from threegen.runtime.server import Runtime, Service
from threegen.runtime.work import Done
from threegen.uploads import read_upload

SERVICE_NAME = render_pb2.DESCRIPTOR.services_by_name["RenderService"].full_name


class RenderServicer(render_pb2_grpc.RenderServiceServicer):
    def __init__(self, runtime: Runtime, settings: RenderSettings, state: dict):
        self.runtime = runtime
        self.settings = settings
        self.state = state

    async def Render(
        self, request_iterator: AsyncIterator[render_pb2.RenderRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[render_pb2.RenderResponse]:
        from services.render.engine import RenderJob

        upload = await read_upload(
            request_iterator,
            files={"geometry": self.settings.max_geometry_bytes},
            idle_seconds=self.settings.upload_idle_seconds,
        )
        plan = validate_options(upload.params.options, max_frames=self.settings.max_frames)
        kind = upload.params.kind
        if kind not in common_pb2.GeometryKind.values():
            raise InvalidArgument([("params.kind", f"unknown geometry kind {kind}")])
        if upload.params.validate_only:
            yield render_pb2.RenderResponse(result=render_pb2.RenderResult())
            return
        v = Violations()
        geometry = upload.files.get("geometry")
        v.check(geometry is not None, "geometry", "required: send the geometry file as chunks after params")
        v.raise_if_any()
        job = RenderJob(geometry.data, plan, geometry.name, kind, self.settings.video_crf)
        self.runtime.require_ready()
        output = None
        async for event in self.runtime.run(functools.partial(self.state["engine"].run, job)):
            if isinstance(event, Done):
                output = event.value
            else:
                yield render_pb2.RenderResponse(progress=event)
        assert output is not None
        for artifact in output.artifacts:
            for chunk in iter_chunks(artifact):
                yield render_pb2.RenderResponse(chunk=chunk)
        yield render_pb2.RenderResponse(
            result=render_pb2.RenderResult(
                artifacts=[a.info() for a in output.artifacts],
                stats=output.stats.to_proto(),
                timings=[
                    common_pb2.Timing(stage=common_pb2.STAGE_RENDER, step=s, seconds=t)
                    for s, t in output.timings
                ],
                frame_count=output.frame_count,
            )
        )


def build(settings: RenderSettings | None = None) -> Service:
    settings = settings or RenderSettings.from_env()
    state: dict = {}

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        render_pb2_grpc.add_RenderServiceServicer_to_server(RenderServicer(runtime, settings, state), server)

    def load(runtime: Runtime) -> None:
        state["platform"] = choose_platform(settings.gl_platform)
        from services.render.engine import RenderEngine

        state["engine"] = RenderEngine()

    return Service(
        name="render",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=register,
        load=load,
        stage=common_pb2.STAGE_RENDER,
    )
