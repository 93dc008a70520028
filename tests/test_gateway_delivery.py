"""The gateway holds the client's copy of a file until the next backend has received its input."""

from __future__ import annotations

import asyncio

from gateway.pipeline import GeneratePipeline, Prepared, Run
from threegen.chunks import Artifact, ArtifactCollector
from threegen.gateway.v1 import gateway_pb2


class BackendCall:
    """What _deliver uses of a grpc.aio call: cancel()."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def a_run(*files: Artifact) -> Run:
    run = Run(gateway_pb2.GenerateRequest(), Prepared(), None, 0, {}, lambda: None)  # type: ignore[arg-type]
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
