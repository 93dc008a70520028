"""Bad input gets INVALID_ARGUMENT naming the field, quickly, and the service keeps serving."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.helpers import png_bytes, recon_requests, triposr
from threegen.chunks import Artifact, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.imagegen.v1 import imagegen_pb2, imagegen_pb2_grpc
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc
from threegen.render.v1 import render_pb2, render_pb2_grpc


def expect_invalid(call, *fields: str) -> list[tuple[str, str]]:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        list(call) if not hasattr(call, "SerializeToString") else call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert time.monotonic() - started < 2.0
    violations = field_violations(caught.value)
    assert {f for f, _ in violations} >= set(fields), violations
    return violations


IMAGEGEN_CASES = [
    (imagegen_pb2.GenerateRequest(), ["prompt"]),
    (imagegen_pb2.GenerateRequest(prompt="x" * 1001), ["prompt"]),
    (imagegen_pb2.GenerateRequest(prompt="a", options=imagegen_pb2.ImageOptions(steps=9)), ["options.steps"]),
    (
        imagegen_pb2.GenerateRequest(prompt="a", options=imagegen_pb2.ImageOptions(width=100)),
        ["options.width"],
    ),
    (
        imagegen_pb2.GenerateRequest(prompt="a", options=imagegen_pb2.ImageOptions(num_views=2, top_k=3)),
        ["options.top_k"],
    ),
    (imagegen_pb2.GenerateRequest(prompt="a", options=imagegen_pb2.ImageOptions(model=7)), ["options.model"]),
    (
        imagegen_pb2.GenerateRequest(
            prompt="", options=imagegen_pb2.ImageOptions(steps=0, height=4096, guidance_scale=-1)
        ),
        ["prompt", "options.height", "options.guidance_scale"],
    ),
]


@pytest.mark.parametrize(("request_", "fields"), IMAGEGEN_CASES)
def test_imagegen_rejects(stack, request_, fields) -> None:
    with stack.imagegen.channel() as channel:
        stub = imagegen_pb2_grpc.ImageGenServiceStub(channel)
        expect_invalid(stub.Generate(request_, timeout=10), *fields)
        good = list(
            stub.Generate(
                imagegen_pb2.GenerateRequest(
                    prompt="ok", options=imagegen_pb2.ImageOptions(width=64, height=64, steps=1)
                ),
                timeout=30,
            )
        )
        assert good[-1].WhichOneof("event") == "result"


def test_imagegen_messages_say_the_limit(stack) -> None:
    with stack.imagegen.channel() as channel:
        stub = imagegen_pb2_grpc.ImageGenServiceStub(channel)
        violations = dict(
            expect_invalid(stub.Generate(imagegen_pb2.GenerateRequest(prompt="x" * 1001), timeout=10))
        )
    assert violations["prompt"] == "exceeds maximum length of 1000 characters"


def test_recon_rejects(stack) -> None:
    image = png_bytes()
    bad_chunks = list(iter_chunks(Artifact("input.png", image), chunk_bytes=100))
    bad_chunks[-1].sha256 = "f" * 64

    def corrupt_digest():
        yield recon_pb2.ReconstructRequest(params=recon_pb2.ReconstructParams())
        for chunk in bad_chunks:
            yield recon_pb2.ReconstructRequest(image=chunk)

    def image_before_params():
        for chunk in iter_chunks(Artifact("input.png", image)):
            yield recon_pb2.ReconstructRequest(image=chunk)

    cases = [
        (recon_requests(None), ["image"]),
        (recon_requests(b"not an image at all"), ["image"]),
        (recon_requests(image[: len(image) // 2]), ["image"]),
        (recon_requests(image, triposr(9999)), ["options.triposr.mc_resolution"]),
        (recon_requests(image, recon_pb2.ReconOptions(family=common_pb2.FAMILY_XCUBE)), ["options.family"]),
        (recon_requests(image, recon_pb2.ReconOptions(family=42)), ["options.family"]),
        (
            recon_requests(image, recon_pb2.ReconOptions(output=common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)),
            ["options.output"],
        ),
        (
            recon_requests(image, recon_pb2.ReconOptions(xcube=recon_pb2.XCubeOptions(ddim_steps=5))),
            ["options.xcube"],
        ),
        (corrupt_digest(), ["image.sha256"]),
        (image_before_params(), ["params"]),
        (recon_requests(image, prompt="p" * 2000), ["prompt"]),
    ]
    with stack.recon.channel() as channel:
        stub = recon_pb2_grpc.ReconServiceStub(channel)
        for requests, fields in cases:
            expect_invalid(stub.Reconstruct(requests, timeout=10), *fields)
        good = list(stub.Reconstruct(recon_requests(image, triposr(32)), timeout=60))
        assert good[-1].result.stats.face_count > 0


def test_render_rejects(stack) -> None:
    def render(options, data: bytes | None):
        yield render_pb2.RenderRequest(params=render_pb2.RenderParams(options=options))
        if data is not None:
            for chunk in iter_chunks(Artifact("mesh.glb", data)):
                yield render_pb2.RenderRequest(geometry=chunk)

    glb = b"glTF" + b"\x00" * 40
    preview = render_pb2.RenderOptions(preview=render_pb2.PreviewOptions(seconds=1, fps=4, resolution=64))
    cases = [
        (render(render_pb2.RenderOptions(), glb), ["options"]),
        (render(preview, None), ["geometry"]),
        (render(preview, glb), ["geometry"]),
        (render(preview, b"hello world"), ["geometry"]),
        (render(render_pb2.RenderOptions(exports=[99]), glb), ["options.exports[0]"]),
        (
            render(
                render_pb2.RenderOptions(preview=render_pb2.PreviewOptions(resolution=65, background="red")),
                glb,
            ),
            ["options.preview.resolution", "options.preview.background"],
        ),
        (
            render(render_pb2.RenderOptions(preview=render_pb2.PreviewOptions(seconds=21, fps=61)), glb),
            ["options.preview.seconds", "options.preview.fps"],
        ),
    ]
    with stack.render.channel() as channel:
        stub = render_pb2_grpc.RenderServiceStub(channel)
        for requests, fields in cases:
            expect_invalid(stub.Render(requests, timeout=10), *fields)


def test_gateway_rejects_and_renames_backend_fields(stack) -> None:
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        violations = expect_invalid(
            stub.Generate(
                gateway_pb2.GenerateRequest(image_options=imagegen_pb2.ImageOptions(steps=9)), timeout=10
            ),
            "prompt",
            "image_options.steps",
        )
        assert [f for f, _ in violations].count("prompt") == 1
        expect_invalid(
            stub.Generate(gateway_pb2.GenerateRequest(image=b"\x89PNG garbage"), timeout=10), "image"
        )
        violations = expect_invalid(
            stub.Generate(
                gateway_pb2.GenerateRequest(
                    prompt="a chair",
                    image_options=imagegen_pb2.ImageOptions(steps=12),
                    recon_options=recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(mc_resolution=4)),
                ),
                timeout=10,
            ),
            "image_options.steps",
            "recon_options.triposr.mc_resolution",
        )
        assert all(not f.startswith("options") for f, _ in violations)
