"""Bad input corpus over every RPC: each case gets the right status naming the field, within a
second, and the service answers a good request right after it."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.conftest import recon_service
from tests.helpers import png_bytes
from tests.servers import serving
from tests.test_end_to_end import run_generate, small_request
from threegen.chunks import Artifact, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.geometry import export_mesh
from threegen.imagegen.v1 import imagegen_pb2, imagegen_pb2_grpc
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc
from threegen.render.v1 import render_pb2, render_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Case:
    name: str
    service: str  # which server the call goes to
    call: Callable[[grpc.Channel], object]
    field: str  # expected among the violated fields (or in the details for other codes)
    code: grpc.StatusCode = INVALID
    # Refusals are quick; the one case that must first push megabytes through HTTP/2 flow control
    # gets more room on a loaded 2-core CI machine (it once took 1.00 s there). A hang still fails:
    # every call has a 5 s deadline and DEADLINE_EXCEEDED is not the expected code.
    within_s: float = 1.0


# ---- request builders ------------------------------------------------------------------


def imagegen(**options) -> Callable[[grpc.Channel], object]:
    prompt = options.pop("prompt", "a chair")
    request = imagegen_pb2.GenerateRequest(prompt=prompt, options=imagegen_pb2.ImageOptions(**options))
    return lambda ch: list(imagegen_pb2_grpc.ImageGenServiceStub(ch).Generate(request, timeout=5))


def raw_unary_stream(method: str, payload: bytes) -> Callable[[grpc.Channel], object]:
    def call(ch: grpc.Channel) -> object:
        rpc = ch.unary_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return list(rpc(payload, timeout=5))

    return call


def recon(messages: Callable[[], Iterator[recon_pb2.ReconstructRequest]]) -> Callable[[grpc.Channel], object]:
    return lambda ch: list(recon_pb2_grpc.ReconServiceStub(ch).Reconstruct(messages(), timeout=5))


def recon_params(options: recon_pb2.ReconOptions | None = None, **params) -> recon_pb2.ReconstructRequest:
    return recon_pb2.ReconstructRequest(params=recon_pb2.ReconstructParams(options=options, **params))


def with_image(image: bytes, options: recon_pb2.ReconOptions | None = None, chunk_bytes: int = 1 << 20):
    def messages() -> Iterator[recon_pb2.ReconstructRequest]:
        yield recon_params(options)
        for chunk in iter_chunks(Artifact("input.png", image), chunk_bytes=chunk_bytes):
            yield recon_pb2.ReconstructRequest(image=chunk)

    return recon(messages)


def mangled_upload(mangle: Callable[[list], list]) -> Callable[[grpc.Channel], object]:
    chunks = list(iter_chunks(Artifact("input.png", png_bytes(64)), chunk_bytes=200))

    def messages() -> Iterator[recon_pb2.ReconstructRequest]:
        yield recon_params()
        for chunk in mangle([type(c)().__class__.FromString(c.SerializeToString()) for c in chunks]):
            yield recon_pb2.ReconstructRequest(image=chunk)

    return recon(messages)


def triposr(**options) -> recon_pb2.ReconOptions:
    return recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(**options))


GLB = export_mesh(__import__("trimesh").creation.box(), "glb")
PLY = export_mesh(__import__("trimesh").creation.box(), "ply")


def render(
    options: render_pb2.RenderOptions, data: bytes | None = GLB, name: str = "mesh.glb", kind: int = 0
):
    def messages() -> Iterator[render_pb2.RenderRequest]:
        yield render_pb2.RenderRequest(params=render_pb2.RenderParams(options=options, kind=kind))
        if data is not None:
            for chunk in iter_chunks(Artifact(name, data)):
                yield render_pb2.RenderRequest(geometry=chunk)

    return lambda ch: list(render_pb2_grpc.RenderServiceStub(ch).Render(messages(), timeout=5))


def preview(**fields) -> render_pb2.RenderOptions:
    return render_pb2.RenderOptions(preview=render_pb2.PreviewOptions(**fields))


def gateway(request: gateway_pb2.GenerateRequest) -> Callable[[grpc.Channel], object]:
    return lambda ch: list(gateway_pb2_grpc.GatewayServiceStub(ch).Generate(request, timeout=5))


def gateway_unary(method: str, request) -> Callable[[grpc.Channel], object]:
    return lambda ch: getattr(gateway_pb2_grpc.GatewayServiceStub(ch), method)(request, timeout=5)


def gateway_stream(method: str, request) -> Callable[[grpc.Channel], object]:
    return lambda ch: list(getattr(gateway_pb2_grpc.GatewayServiceStub(ch), method)(request, timeout=5))


def upload(chunks: list) -> Callable[[grpc.Channel], object]:
    return lambda ch: gateway_pb2_grpc.GatewayServiceStub(ch).UploadInput(
        iter([gateway_pb2.UploadInputRequest(chunk=c) for c in chunks]), timeout=5
    )


def generate_request(**fields) -> gateway_pb2.GenerateRequest:
    request = small_request()
    for key, value in fields.items():
        if hasattr(value, "DESCRIPTOR"):
            getattr(request, key).CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


# ---- inputs that are bad in themselves ---------------------------------------------------------


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def huge_png(side: int = 20000) -> bytes:
    """A 20000 x 20000 PNG that is small on the wire (one bit per pixel, all zero)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


HUGE = huge_png()


def cases() -> list[Case]:
    png = png_bytes(64)
    gap = lambda chunks: chunks[:1] + chunks[2:]  # noqa: E731
    swap = lambda chunks: [chunks[1], chunks[0], *chunks[2:]]  # noqa: E731

    def bad_digest(chunks: list) -> list:
        chunks[-1].sha256 = "0" * 64
        return chunks

    def overrun(chunks: list) -> list:
        chunks[-1].data += b"extra"
        return chunks

    def oversize(chunks: list) -> list:
        for chunk in chunks:
            chunk.total_size = 1 << 40
        return chunks

    def no_last(chunks: list) -> list:
        return chunks[:-1]

    def two_params() -> Iterator[recon_pb2.ReconstructRequest]:
        yield recon_params()
        yield recon_params()

    def image_first() -> Iterator[recon_pb2.ReconstructRequest]:
        for chunk in iter_chunks(Artifact("input.png", png)):
            yield recon_pb2.ReconstructRequest(image=chunk)

    def mask_for_triposr() -> Iterator[recon_pb2.ReconstructRequest]:
        yield recon_params()
        for part, data in (("image", png), ("mask", png)):
            for chunk in iter_chunks(Artifact(f"{part}.png", data)):
                yield recon_pb2.ReconstructRequest(**{part: chunk})

    too_big_upload = list(iter_chunks(Artifact("x.png", png)))
    for chunk in too_big_upload:
        chunk.total_size = 1 << 40
    upload_gap = list(iter_chunks(Artifact("x.png", png), chunk_bytes=100))
    upload_gap = upload_gap[:1] + upload_gap[2:]
    point_ply = (
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    )
    point_ply += "end_header\n0 0 0\n1 0 0\n0 1 0\n"
    return [
        # imagegen.Generate
        Case("empty request", "imagegen", imagegen(prompt=""), "prompt"),
        Case("blank prompt", "imagegen", imagegen(prompt="   "), "prompt"),
        Case("1 MB prompt", "imagegen", imagegen(prompt="x" * 1_000_000), "prompt"),
        Case("1001-char prompt", "imagegen", imagegen(prompt="y" * 1001), "prompt"),
        Case(
            "PNG level 10",
            "imagegen",
            lambda ch: list(
                imagegen_pb2_grpc.ImageGenServiceStub(ch).Generate(
                    imagegen_pb2.GenerateRequest(prompt="a", png_level=10), timeout=5
                )
            ),
            "png_level",
        ),
        Case(
            "long negative prompt",
            "imagegen",
            imagegen(negative_prompt="n" * 1001),
            "options.negative_prompt",
        ),
        Case("steps 5", "imagegen", imagegen(steps=5), "options.steps"),
        Case("steps huge", "imagegen", imagegen(steps=4_000_000_000), "options.steps"),
        Case("guidance negative", "imagegen", imagegen(guidance_scale=-1), "options.guidance_scale"),
        Case("guidance huge", "imagegen", imagegen(guidance_scale=1e30), "options.guidance_scale"),
        Case("guidance NaN", "imagegen", imagegen(guidance_scale=float("nan")), "options.guidance_scale"),
        Case("width not multiple of 64", "imagegen", imagegen(width=100), "options.width"),
        Case("width 4096", "imagegen", imagegen(width=4096), "options.width"),
        Case("height 63", "imagegen", imagegen(height=63), "options.height"),
        Case("9 views", "imagegen", imagegen(num_views=9), "options.num_views"),
        Case("top_k > views", "imagegen", imagegen(num_views=2, top_k=5), "options.top_k"),
        Case("unknown model enum", "imagegen", imagegen(model=99), "options.model"),
        Case(
            "LoRA path traversal",
            "imagegen",
            imagegen(loras=[imagegen_pb2.LoraWeight(name="../x")]),
            "options.loras[0].name",
        ),
        Case(
            "LoRA absolute path",
            "imagegen",
            imagegen(loras=[imagegen_pb2.LoraWeight(name="/etc/passwd")]),
            "options.loras[0].name",
        ),
        Case(
            "LoRA subfolder",
            "imagegen",
            imagegen(loras=[imagegen_pb2.LoraWeight(name="a/b")]),
            "options.loras[0].name",
        ),
        Case(
            "LoRA scale 100",
            "imagegen",
            imagegen(loras=[imagegen_pb2.LoraWeight(name="a", scale=100)]),
            "options.loras[0].scale",
        ),
        Case(
            "LoRAs disabled",
            "imagegen",
            imagegen(loras=[imagegen_pb2.LoraWeight(name="castle")]),
            "options.loras[0].name",
        ),
        Case(
            "9 LoRAs",
            "imagegen",
            imagegen(loras=[imagegen_pb2.LoraWeight(name=f"l{i}") for i in range(9)]),
            "options.loras",
        ),
        Case("foreground ratio 0.1", "imagegen", imagegen(foreground_ratio=0.1), "options.foreground_ratio"),
        Case(
            "prompt sent as an integer",
            "imagegen",
            raw_unary_stream("/threegen.imagegen.v1.ImageGenService/Generate", bytes([0x08, 0x05])),
            "prompt",
        ),
        Case(
            "truncated protobuf",
            "imagegen",
            raw_unary_stream("/threegen.imagegen.v1.ImageGenService/Generate", bytes([0x0A, 0x10, 0x41])),
            "request",
        ),
        # recon.Reconstruct
        Case("empty stream", "recon", recon(lambda: iter(())), "params"),
        Case("image before params", "recon", recon(image_first), "params"),
        Case("params twice", "recon", recon(two_params), "params"),
        Case("no image", "recon", recon(lambda: iter([recon_params()])), "image"),
        Case("not an image", "recon", with_image(b"hello, not an image"), "image"),
        Case("truncated PNG", "recon", with_image(truncated(png)), "image"),
        Case("truncated JPEG", "recon", with_image(truncated(jpeg_bytes())), "image"),
        Case("20k x 20k image", "recon", with_image(HUGE), "image"),
        Case(
            "mc_resolution 9999",
            "recon",
            with_image(png, triposr(mc_resolution=9999)),
            "options.triposr.mc_resolution",
        ),
        Case(
            "mc_resolution 1",
            "recon",
            with_image(png, triposr(mc_resolution=1)),
            "options.triposr.mc_resolution",
        ),
        Case(
            "foreground ratio 5",
            "recon",
            with_image(png, triposr(foreground_ratio=5)),
            "options.triposr.foreground_ratio",
        ),
        Case(
            "negative density threshold",
            "recon",
            with_image(png, triposr(density_threshold=-1)),
            "options.triposr.density_threshold",
        ),
        Case("unknown family", "recon", with_image(png, recon_pb2.ReconOptions(family=42)), "options.family"),
        Case(
            "family not served",
            "recon",
            with_image(png, recon_pb2.ReconOptions(family=common_pb2.FAMILY_XCUBE)),
            "options.family",
        ),
        Case(
            "options of another family",
            "recon",
            with_image(png, recon_pb2.ReconOptions(xcube=recon_pb2.XCubeOptions())),
            "options.xcube",
        ),
        Case(
            "output splat from TripoSR",
            "recon",
            with_image(png, recon_pb2.ReconOptions(output=common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)),
            "options.output",
        ),
        Case(
            "unknown output enum",
            "recon",
            with_image(png, recon_pb2.ReconOptions(output=77)),
            "options.output",
        ),
        Case("chunk gap", "recon", mangled_upload(gap), "image.offset"),
        Case("chunks out of order", "recon", mangled_upload(swap), "image.offset"),
        Case("wrong digest", "recon", mangled_upload(bad_digest), "image.sha256"),
        Case("stream never finished", "recon", mangled_upload(no_last), "image.last"),
        Case("more bytes than declared", "recon", mangled_upload(overrun), "image.data"),
        Case("declared size over the limit", "recon", mangled_upload(oversize), "image.total_size"),
        Case("mask for TripoSR", "recon", recon(mask_for_triposr), "mask"),
        Case("prompt too long", "recon", recon(lambda: iter([recon_params(prompt="p" * 2000)])), "prompt"),
        # render.Render
        Case("nothing to produce", "render", render(render_pb2.RenderOptions()), "options"),
        Case("no geometry", "render", render(preview(), None), "geometry"),
        Case(
            "corrupt GLB",
            "render",
            render(preview(), b"glTF" + b"\x02\x00\x00\x00" + b"\x00" * 40),
            "geometry",
        ),
        Case("truncated PLY", "render", render(preview(), truncated(PLY), "mesh.ply"), "geometry"),
        Case("text garbage", "render", render(preview(), b"\x00\x01 what is this", "x.bin"), "geometry"),
        Case(
            "unknown export", "render", render(render_pb2.RenderOptions(exports=[99])), "options.exports[0]"
        ),
        Case("fps 61", "render", render(preview(fps=61)), "options.preview.fps"),
        Case("odd resolution", "render", render(preview(resolution=65)), "options.preview.resolution"),
        Case("100 s preview", "render", render(preview(seconds=100)), "options.preview.seconds"),
        Case("bad colour", "render", render(preview(background="blue")), "options.preview.background"),
        Case("elevation 90", "render", render(preview(elevation_deg=90)), "options.preview.elevation_deg"),
        Case(
            "tiny thumbnail",
            "render",
            render(render_pb2.RenderOptions(thumbnail=render_pb2.ThumbnailOptions(resolution=10))),
            "options.thumbnail.resolution",
        ),
        Case(
            "one-view contact sheet",
            "render",
            render(render_pb2.RenderOptions(contact_sheet=render_pb2.ContactSheetOptions(views=1))),
            "options.contact_sheet.views",
        ),
        Case(
            "simplify ratio 1.5",
            "render",
            render(render_pb2.RenderOptions(exports=[1], simplify=render_pb2.SimplifyOptions(ratio=1.5))),
            "options.simplify.ratio",
        ),
        Case(
            "simplify without target",
            "render",
            render(render_pb2.RenderOptions(exports=[1], simplify=render_pb2.SimplifyOptions())),
            "options.simplify",
        ),
        Case(
            "texture limit 10",
            "render",
            render(render_pb2.RenderOptions(exports=[1], texture_size_limit=10)),
            "options.texture_size_limit",
        ),
        Case(
            "surface depth 20",
            "render",
            render(
                render_pb2.RenderOptions(exports=[1], reconstruct_surface=render_pb2.SurfaceOptions(depth=20))
            ),
            "options.reconstruct_surface.depth",
        ),
        Case(
            "kind mismatch",
            "render",
            render(render_pb2.RenderOptions(exports=[1]), kind=common_pb2.GEOMETRY_KIND_POINT_CLOUD),
            "params.kind",
        ),
        Case(
            "unknown kind enum",
            "render",
            render(render_pb2.RenderOptions(exports=[1]), kind=9),
            "params.kind",
        ),
        Case(
            "STL of a point cloud",
            "render",
            render(
                render_pb2.RenderOptions(exports=[render_pb2.MESH_FORMAT_STL]), point_ply.encode(), "p.ply"
            ),
            "options.exports",
        ),
        # gateway
        Case("gateway empty request", "gateway", gateway(gateway_pb2.GenerateRequest()), "prompt"),
        Case(
            "image twice", "gateway", gateway(generate_request(image=png, image_input_id="0" * 64)), "image"
        ),
        Case(
            "unknown upload id",
            "gateway",
            gateway(generate_request(prompt="", image_input_id="f" * 64)),
            "image_input_id",
        ),
        Case(
            "URL inputs disabled",
            "gateway",
            gateway(generate_request(image_url="http://example.com/x.png")),
            "image_url",
        ),
        Case(
            "inline image over 3 MiB",
            "gateway",
            gateway(generate_request(image=b"\x89PNG" + b"\x00" * (3 * 1024 * 1024 + 10))),
            "image",
        ),
        Case(
            "bad inline image", "gateway", gateway(generate_request(prompt="", image=truncated(png))), "image"
        ),
        Case("bad mask", "gateway", gateway(generate_request(mask=b"not a mask")), "mask"),
        Case(
            "imagegen field renamed",
            "gateway",
            gateway(generate_request(image_options=imagegen_pb2.ImageOptions(steps=9))),
            "image_options.steps",
        ),
        Case(
            "recon field renamed",
            "gateway",
            gateway(generate_request(recon_options=triposr(mc_resolution=1))),
            "recon_options.triposr.mc_resolution",
        ),
        Case(
            "render field renamed",
            "gateway",
            gateway(generate_request(outputs=preview(fps=99))),
            "outputs.preview.fps",
        ),
        Case(
            "SubmitJob invalid",
            "gateway",
            gateway_unary(
                "SubmitJob",
                gateway_pb2.SubmitJobRequest(
                    request=generate_request(image_options=imagegen_pb2.ImageOptions(width=3))
                ),
            ),
            "image_options.width",
        ),
        Case(
            "GetJob unknown",
            "gateway",
            gateway_unary("GetJob", gateway_pb2.GetJobRequest(job_id="nope")),
            "nope",
            grpc.StatusCode.NOT_FOUND,
        ),
        Case(
            "CancelJob unknown",
            "gateway",
            gateway_unary("CancelJob", gateway_pb2.CancelJobRequest(job_id="x")),
            "no job",
            grpc.StatusCode.NOT_FOUND,
        ),
        Case(
            "WatchJob unknown",
            "gateway",
            gateway_stream("WatchJob", gateway_pb2.WatchJobRequest(job_id="x")),
            "no job",
            grpc.StatusCode.NOT_FOUND,
        ),
        Case(
            "DownloadArtifact unknown",
            "gateway",
            gateway_stream(
                "DownloadArtifact", gateway_pb2.DownloadArtifactRequest(job_id="x", name="mesh.glb")
            ),
            "no job",
            grpc.StatusCode.NOT_FOUND,
        ),
        Case(
            "ListJobs page too big",
            "gateway",
            gateway_unary("ListJobs", gateway_pb2.ListJobsRequest(page_size=10_000)),
            "page_size",
        ),
        Case(
            "ListJobs forged token",
            "gateway",
            gateway_unary("ListJobs", gateway_pb2.ListJobsRequest(page_token="garbage")),
            "page_token",
        ),
        Case(
            "ListJobs unknown status",
            "gateway",
            gateway_unary("ListJobs", gateway_pb2.ListJobsRequest(status=99)),
            "status",
        ),
        Case("upload not an image", "gateway", upload(list(iter_chunks(Artifact("x", b"nope")))), "chunk"),
        Case("upload with a gap", "gateway", upload(upload_gap), "chunk.offset"),
        Case("upload over the limit", "gateway", upload(too_big_upload), "chunk.total_size"),
        Case("empty upload", "gateway", upload([]), "chunk"),
        Case(
            "message over 4 MiB",
            "gateway",
            gateway(generate_request(image=b"\x00" * (5 * 1024 * 1024))),
            "larger than max",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            within_s=3.0,
        ),
    ]


CASES = cases()


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert {c.service for c in CASES} == {"imagegen", "recon", "render", "gateway"}


def good_request(service: str, channel: grpc.Channel) -> None:
    if service == "imagegen":
        request = imagegen_pb2.GenerateRequest(prompt="fine", validate_only=True)
        list(imagegen_pb2_grpc.ImageGenServiceStub(channel).Generate(request, timeout=5))
    elif service == "recon":
        list(
            recon_pb2_grpc.ReconServiceStub(channel).Reconstruct(
                iter([recon_params(validate_only=True)]), timeout=5
            )
        )
    elif service == "render":
        params = render_pb2.RenderParams(options=render_pb2.RenderOptions(exports=[1]), validate_only=True)
        list(
            render_pb2_grpc.RenderServiceStub(channel).Render(
                iter([render_pb2.RenderRequest(params=params)]), timeout=5
            )
        )
    else:
        gateway_pb2_grpc.GatewayServiceStub(channel).ListJobs(
            gateway_pb2.ListJobsRequest(page_size=1), timeout=5
        )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(stack, case: Case) -> None:
    server = getattr(stack, case.service)
    with grpc.insecure_channel(server.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)  # time the refusal, not the connect
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            case.call(channel)
        elapsed = time.monotonic() - started
        error = caught.value
        assert error.code() == case.code, error.details()
        if case.code == INVALID:
            fields = [f for f, _ in field_violations(error)]
            assert any(
                case.field == f or f.startswith(case.field + ".") or f.startswith(case.field + "[")
                for f in fields
            ), (fields, error.details())
            assert all(d for _, d in field_violations(error))  # every violation says what is wrong
        else:
            assert case.field in error.details()
        assert elapsed < case.within_s, f"{case.name} took {elapsed:.2f} s"
        good_request(case.service, channel)


def test_an_upload_that_stalls_is_refused_quickly(tiny) -> None:
    with serving(recon_service(tiny, upload_idle_seconds=0.5)) as server, server.channel() as channel:

        def stalled() -> Iterator[recon_pb2.ReconstructRequest]:
            yield recon_params()
            time.sleep(3)  # the client goes quiet without finishing its stream
            yield recon_params()

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            list(recon_pb2_grpc.ReconServiceStub(channel).Reconstruct(stalled(), timeout=10))
        assert caught.value.code() == INVALID and "stalled" in caught.value.details()
        assert time.monotonic() - started < 2.0  # the idle timer (0.5 s), not the 3 s the client sleeps
        good_request("recon", channel)


def test_after_the_corpus_the_stack_still_generates(stack) -> None:
    assert run_generate(stack.gateway.address, small_request())[2].stats.face_count > 0
