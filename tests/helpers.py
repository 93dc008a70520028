"""Small request builders shared by tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from threegen.chunks import Artifact, ArtifactCollector, iter_chunks
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc


def png_bytes(size: int = 64, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    pixels = rng.integers(0, 255, (size, size, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = 0
        pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def recon_requests(
    image: bytes | None,
    options: recon_pb2.ReconOptions | None = None,
    seed: int = 1,
    mask: bytes | None = None,
    **params,
):
    yield recon_pb2.ReconstructRequest(
        params=recon_pb2.ReconstructParams(seed=seed, options=options or recon_pb2.ReconOptions(), **params)
    )
    if image is not None:
        for chunk in iter_chunks(Artifact("input.png", image)):
            yield recon_pb2.ReconstructRequest(image=chunk)
    if mask is not None:
        for chunk in iter_chunks(Artifact("mask.png", mask)):
            yield recon_pb2.ReconstructRequest(mask=chunk)


def triposr(mc_resolution: int) -> recon_pb2.ReconOptions:
    return recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(mc_resolution=mc_resolution))


def collect(responses):
    """A service's response stream (progress / chunk / result events) -> (files by name, result,
    progress events); every file must have arrived whole."""
    collector, result, progress = ArtifactCollector(), None, []
    for response in responses:
        kind = response.WhichOneof("event")
        if kind == "chunk":
            collector.add(response.chunk)
        elif kind == "progress":
            progress.append(response.progress)
        else:
            assert result is None, "exactly one result, last"
            result = response.result
    collector.check_complete()
    return collector.finished, result, progress


def reconstruct(server, image: bytes | None, options: recon_pb2.ReconOptions, timeout: float = 120, **params):
    with server.channel() as channel:
        stub = recon_pb2_grpc.ReconServiceStub(channel)
        return collect(stub.Reconstruct(recon_requests(image, options, **params), timeout=timeout))


def steps(progress) -> list[str]:
    seen: list[str] = []
    for event in progress:
        if event.step not in seen:
            seen.append(event.step)
    return seen
