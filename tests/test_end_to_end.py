"""The whole chain over real gRPC: gateway -> imagegen -> recon -> render, on tiny checkpoints."""

from __future__ import annotations

import io
from collections import defaultdict

import av
import grpc
import pytest
import trimesh

from tests.helpers import collect
from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.imagegen.v1 import imagegen_pb2
from threegen.recon.v1 import recon_pb2
from threegen.render.v1 import render_pb2


def run_generate(address: str, request: gateway_pb2.GenerateRequest, timeout: float = 120):
    with grpc.insecure_channel(address) as channel:
        files, result, progress = collect(
            gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=timeout)
        )
    return progress, files, result


def small_request(seed: int = 7, **kwargs) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(
        prompt="a wooden chair",
        seed=seed,
        image_options=imagegen_pb2.ImageOptions(width=64, height=64, steps=2),
        recon_options=recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(mc_resolution=48)),
        outputs=render_pb2.RenderOptions(
            exports=[render_pb2.MESH_FORMAT_GLB, render_pb2.MESH_FORMAT_PLY],
            preview=render_pb2.PreviewOptions(seconds=1.0, fps=10, resolution=96),
        ),
        **kwargs,
    )


def test_text_to_glb_and_mp4(stack) -> None:
    # A seed no other test uses: the gateway serves a repeated seeded request from its result cache.
    progress, files, result = run_generate(stack.gateway.address, small_request(seed=70071))

    assert set(files) == {"image.png", "mesh.glb", "mesh.ply", "preview.mp4"}
    # The gateway asks imagegen for a stored PNG (GATEWAY_IMAGE_PNG_LEVEL 0): every pixel byte is there.
    assert len(files["image.png"].data) > 64 * 64 * 3
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0
    assert mesh.visual.kind == "vertex"  # TripoSR's vertex colours survive the whole chain
    ply = trimesh.load(io.BytesIO(files["mesh.ply"].data), file_type="ply")
    assert len(ply.faces) == len(mesh.faces)

    with av.open(io.BytesIO(files["preview.mp4"].data)) as video:
        stream = video.streams.video[0]
        frames = list(video.decode(stream))
        assert stream.codec_context.name == "h264"
    assert len(frames) == 10  # 1 s x 10 fps
    assert (frames[0].width, frames[0].height) == (96, 96)

    assert result.seed == 70071 and not result.cached
    assert result.stats.face_count == len(mesh.faces)
    assert result.family == common_pb2.FAMILY_TRIPOSR
    assert {a.name for a in result.artifacts} == set(files)
    assert {a.name: a.sha256 for a in result.artifacts} == {n: f.sha256 for n, f in files.items()}
    assert result.request_id
    stages_timed = {t.stage for t in result.timings}
    assert {common_pb2.STAGE_IMAGE, common_pb2.STAGE_RECONSTRUCT, common_pb2.STAGE_RENDER} <= stages_timed
    assert result.views[0].seed == 70071
    # The gateway adds what each hop cost beyond the backend's own reported work, and its checks.
    overhead = {t.stage for t in result.timings if t.step == "rpc_overhead"}
    assert overhead == {common_pb2.STAGE_IMAGE, common_pb2.STAGE_RECONSTRUCT, common_pb2.STAGE_RENDER}
    assert any(t.stage == common_pb2.STAGE_QUEUED and t.step == "check" for t in result.timings)
    worked = sum(t.seconds for t in result.timings if t.stage != common_pb2.STAGE_QUEUED)
    assert worked <= result.total_seconds + 1e-3  # the parts never add up to more than the whole
    assert {"preview_scene", "preview_frames", "preview_encode"} <= {t.step for t in result.timings}

    by_stage = defaultdict(list)
    for event in progress:
        by_stage[event.stage].append(event.fraction)
    assert [s for s in by_stage if s != common_pb2.STAGE_QUEUED] == [
        common_pb2.STAGE_IMAGE,
        common_pb2.STAGE_RECONSTRUCT,
        common_pb2.STAGE_RENDER,
    ]
    for stage, fractions in by_stage.items():
        assert fractions == sorted(fractions), f"fractions of {common_pb2.Stage.Name(stage)} went backwards"
        assert all(0.0 <= f <= 1.0 for f in fractions)
    overall = [e.overall_fraction for e in progress]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)


def test_same_seed_same_geometry(stack) -> None:
    # The preview rate differs, so the second is computed again rather than served from the cache.
    again = small_request(seed=70072)
    again.outputs.preview.fps = 12
    _, first, first_result = run_generate(stack.gateway.address, small_request(seed=70072))
    _, second, second_result = run_generate(stack.gateway.address, again)
    assert not first_result.cached and not second_result.cached
    assert first["image.png"].sha256 == second["image.png"].sha256
    assert first["mesh.glb"].sha256 == second["mesh.glb"].sha256


def test_image_input_skips_imagegen(stack) -> None:
    _, files, _ = run_generate(stack.gateway.address, small_request())
    request = small_request()
    request.prompt = ""
    request.image = files["image.png"].data
    progress, image_files, result = run_generate(stack.gateway.address, request)
    assert common_pb2.STAGE_IMAGE not in {p.stage for p in progress}
    assert "image.png" not in image_files
    assert result.stats.face_count > 0
    # The same picture through the same model gives the same mesh as the text path.
    assert image_files["mesh.glb"].sha256 == files["mesh.glb"].sha256


def test_bad_render_option_fails_before_any_work(stack) -> None:
    request = small_request()
    request.outputs.preview.fps = 500
    with pytest.raises(grpc.RpcError) as caught:
        run_generate(stack.gateway.address, request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outputs.preview.fps" in caught.value.details()
