"""The gateway's relay of a mesh, on its own: source --4 MB--> relay --4 MB--> sink, the relay
waiting for the whole file (as the gateway did) or passing each chunk on as it arrives (as it
does for GLB). Three processes on localhost, the two ways timed in alternating rounds; CPU only.

    python -m bench.relay [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time

import grpc

from bench.common import summary
from threegen.chunks import Artifact, ArtifactCollector, iter_chunks
from threegen.render.v1 import render_pb2, render_pb2_grpc

MESH = Artifact("mesh.glb", b"glTF" + os.urandom(4_094_372))  # the hot path's GLB size
SOURCE, SINK = 53001, 53002


class Source(render_pb2_grpc.RenderServiceServicer):
    """Like recon: the whole file, chunked, after its work."""

    async def Render(self, request_iterator, context):
        async for _ in request_iterator:
            pass
        for chunk in iter_chunks(MESH):
            yield render_pb2.RenderResponse(chunk=chunk)
        yield render_pb2.RenderResponse(result=render_pb2.RenderResult())


class Sink(render_pb2_grpc.RenderServiceServicer):
    """Like render: reassembles the upload and checks its digest."""

    async def Render(self, request_iterator, context):
        files = ArtifactCollector()
        async for request in request_iterator:
            if request.HasField("geometry"):
                files.add(request.geometry)
        yield render_pb2.RenderResponse(result=render_pb2.RenderResult())


def serve(port: int, servicer: render_pb2_grpc.RenderServiceServicer) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        render_pb2_grpc.add_RenderServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


async def relay_once(source, sink, pipelined: bool) -> float:
    started = time.perf_counter()
    queue: asyncio.Queue = asyncio.Queue()

    async def upload():
        yield render_pb2.RenderRequest(params=render_pb2.RenderParams())
        while True:
            chunk = await queue.get()
            yield render_pb2.RenderRequest(geometry=chunk)
            if chunk.last:
                return

    received = ArtifactCollector(verify=False)
    call = None
    async for response in source.Render(iter([render_pb2.RenderRequest()])):
        if response.WhichOneof("event") == "chunk":
            received.add(response.chunk)
            if pipelined:
                call = call or sink.Render(upload())
                queue.put_nowait(response.chunk)
    if not pipelined:
        call = sink.Render(upload())
        for chunk in iter_chunks(received.finished[MESH.name]):
            queue.put_nowait(chunk)
    async for _ in call:
        pass
    return time.perf_counter() - started


async def measure(rounds: int) -> dict[str, dict]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{SOURCE}") as a,
        grpc.aio.insecure_channel(f"127.0.0.1:{SINK}") as b,
    ):
        source, sink = render_pb2_grpc.RenderServiceStub(a), render_pb2_grpc.RenderServiceStub(b)
        for _ in range(5):  # warm both ways
            await relay_once(source, sink, True)
            await relay_once(source, sink, False)
        times: dict[str, list[float]] = {"sequential": [], "pipelined": []}
        for _ in range(rounds):
            for name in times:
                times[name].append(await relay_once(source, sink, name == "pipelined"))
    return {name: summary(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    servers = [
        multiprocessing.Process(target=serve, args=(SOURCE, Source()), daemon=True),
        multiprocessing.Process(target=serve, args=(SINK, Sink()), daemon=True),
    ]
    for server in servers:
        server.start()
    time.sleep(2)
    try:
        for name, figures in asyncio.run(measure(args.rounds)).items():
            print(f"{name:10s} p50 {figures['p50_ms']:.1f} ms  p95 {figures['p95_ms']:.1f} ms")
    finally:
        for server in servers:
            server.terminate()


if __name__ == "__main__":
    main()
