"""How the gateway moves files between stages: the client's copy of a file waits until the next
backend has its input, and recon's GLB goes on to render chunk by chunk as it arrives."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from gateway.pipeline import GeneratePipeline, Prepared, Run, default_outputs
from threegen.chunks import Artifact, ArtifactCollector, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2
from threegen.render.v1 import render_pb2


class BackendCall:
    """What the pipeline uses of a grpc.aio call: cancel(), done(), add_done_callback()."""

    def __init__(self) -> None:
        self.cancelled = False

    def done(self) -> bool:
        return self.cancelled

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def add_done_callback(self, callback) -> None:
        pass


class RenderStub:
    """What the pipeline uses of render's stub: Render(requests) -> call; keeps the requests."""

    def __init__(self) -> None:
        self.requests = None

    def Render(self, requests, **_) -> BackendCall:
        self.requests = requests
        return BackendCall()


def a_run(*files: Artifact) -> Run:
    run = Run(gateway_pb2.GenerateRequest(), Prepared(), default_outputs(), 0, {}, lambda: None)
    run.deferred.extend(files)
    return run


async def collect(run: Run, uploaded: asyncio.Event, call: BackendCall, into: list) -> None:
    async for response in GeneratePipeline._deliver(run, uploaded, call):
        into.append(response.chunk)


def test_files_wait_for_the_upload_then_all_go_in_order() -> None:
    image = Artifact("image.png", b"\x89PNG" + bytes(3 << 20))  # several chunks
    splats = Artifact("splats.ply", b"ply\n" + bytes(100))

    async def scenario() -> list:
        run, uploaded, call, sent = a_run(image, splats), asyncio.Event(), BackendCall(), []
        task = asyncio.create_task(collect(run, uploaded, call, sent))
        await asyncio.sleep(0.05)
        assert sent == [] and not task.done()  # the backend's upload is still going
        uploaded.set()
        await asyncio.wait_for(task, 5)
        assert run.deferred == [] and not call.cancelled
        return sent

    chunks = asyncio.run(scenario())
    assert [c.name for c in chunks][-1] == "splats.ply"
    collector = ArtifactCollector()
    for chunk in chunks:
        collector.add(chunk)
    assert collector.finished["image.png"].data == image.data
    assert collector.finished["splats.ply"].data == splats.data


def test_a_client_gone_while_waiting_cancels_the_backend_call() -> None:
    async def scenario() -> BackendCall:
        run, call = a_run(Artifact("image.png", b"\x89PNG")), BackendCall()
        task = asyncio.create_task(collect(run, asyncio.Event(), call, []))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return call

    assert asyncio.run(scenario()).cancelled


def test_nothing_deferred_does_not_wait() -> None:
    async def scenario() -> list:
        sent: list = []
        await asyncio.wait_for(collect(a_run(), asyncio.Event(), BackendCall(), sent), 1)
        return sent

    assert asyncio.run(scenario()) == []


def relayed(head: bytes, *extra: Artifact) -> tuple[Run, RenderStub, list, Artifact]:
    """recon's stream as the gateway sees it: a 1 MB main file starting with `head`, then `extra`."""
    stub = RenderStub()
    pipeline = GeneratePipeline(SimpleNamespace(render=stub), None, lambda _: None)  # type: ignore[arg-type]
    run, main = a_run(), Artifact("mesh.glb" if head == b"glTF" else "points.ply", head + bytes(1 << 20))
    opened = []  # whether render's call was open after each chunk
    for artifact in (main, *extra):
        for chunk in iter_chunks(artifact):
            pipeline._relay(run, chunk)
            opened.append(run.render is not None)
    return run, stub, opened, main


def test_a_glb_goes_on_to_render_from_its_first_chunk() -> None:
    splats = Artifact("splats.ply", b"ply\n" + bytes(300_000))
    run, stub, opened, mesh = relayed(b"glTF", splats)
    assert all(opened)  # render's call opened on the first chunk, before the rest arrived
    assert run.render.kind == common_pb2.GEOMETRY_KIND_MESH
    assert run.render.direct == render_pb2.MESH_FORMAT_GLB  # the GLB export is recon's own file

    async def upload() -> list:
        return [r async for r in stub.requests]

    sent = asyncio.run(upload())
    params = sent[0].params
    assert params.kind == common_pb2.GEOMETRY_KIND_MESH
    assert list(params.options.exports) == [render_pb2.MESH_FORMAT_PLY]  # render makes only the PLY
    assert params.options.preview.fps == 16
    files = ArtifactCollector()
    for request in sent[1:]:
        files.add(request.geometry)
    assert list(files.finished) == ["mesh.glb"]  # the splats were not sent to render
    assert files.finished["mesh.glb"].data == mesh.data
    assert run.render.uploaded.is_set()


def test_a_ply_waits_for_recons_result() -> None:
    run, stub, opened, _ = relayed(b"ply\n")  # points, splats or a mesh: only the result says
    assert run.render is None and not any(opened) and stub.requests is None


def test_a_request_that_ends_early_cancels_render_and_ends_its_upload() -> None:
    stub = RenderStub()
    pipeline = GeneratePipeline(SimpleNamespace(render=stub), None, lambda _: None)  # type: ignore[arg-type]
    run = a_run()
    first = next(iter_chunks(Artifact("mesh.glb", b"glTF" + bytes(1 << 20))))
    pipeline._relay(run, first)  # recon then fails: the rest of the file never comes

    async def scenario() -> list:
        upload = asyncio.ensure_future(asyncio.wait_for(_drain(stub.requests), 5))
        await asyncio.sleep(0.05)
        assert not upload.done()  # render's upload waits for recon's next chunk
        GeneratePipeline._close_render(run)
        return await upload

    sent = asyncio.run(scenario())
    assert [r.WhichOneof("part") for r in sent] == ["params", "geometry"]
    assert run.render.call.cancelled and not run.render.uploaded.is_set()


async def _drain(requests) -> list:
    return [r async for r in requests]
