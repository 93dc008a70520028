"""Hunyuan3D-2 through recon's gRPC API, on a tiny checkpoint in the published layout.

The shape model and the texture models are hy3dgen's own classes loaded by its own loader
from tencent/Hunyuan3D-2's folder layout; the texture baker rasterizes with threegen's torch
rasterizer (the CUDA extension is not installed here).
"""

from __future__ import annotations

import io
import shutil

import grpc
import numpy as np
import pytest
import trimesh

from tests.conftest import recon_service
from tests.helpers import png_bytes, reconstruct, steps, triposr
from tests.servers import serving
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc

pytest.importorskip("hy3dgen")


@pytest.fixture(scope="module")
def hunyuan(tiny_families):
    service = recon_service(
        tiny_families,
        families=("triposr", "hunyuan3d"),
        hunyuan3d_model=str(tiny_families["hunyuan3d"]),
        hunyuan3d_paint_model=str(tiny_families["hunyuan3d"]),
        hunyuan3d_max_faces=800,
        hunyuan3d_view_size=64,
        hunyuan3d_render_size=128,
        hunyuan3d_texture_size=128,
        hunyuan3d_delight_steps=2,
        hunyuan3d_paint_steps=2,
    )
    with serving(service) as server:
        yield server


def options(**kwargs) -> recon_pb2.ReconOptions:
    kwargs.setdefault("steps", 2)
    kwargs.setdefault("octree_resolution", 64)
    return recon_pb2.ReconOptions(
        family=common_pb2.FAMILY_HUNYUAN3D, hunyuan3d=recon_pb2.Hunyuan3DOptions(**kwargs)
    )


def test_shape_only_gives_a_reduced_mesh_with_every_stage_timed(hunyuan) -> None:
    files, result, progress = reconstruct(hunyuan, png_bytes(64, mode="RGBA"), options(texture=False))
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    # Clean-up ran: floaters dropped, then quadric decimation to the configured cap.
    cleaned = next(e.message for e in progress if e.step == "clean_mesh")
    before, after = (int(n) for n in cleaned.removesuffix(" faces").split(" -> "))
    assert after == len(mesh.faces) and 0 < after <= 800 < before
    assert result.model == "hunyuan3d" and result.family == common_pb2.FAMILY_HUNYUAN3D
    assert result.stats.face_count == len(mesh.faces)
    timed = [t.step for t in result.timings]
    assert timed[:5] == ["decode_input", "encode_image", "denoise", "decode_volume", "marching_cubes"]
    assert "clean_mesh" in timed and "texture" not in timed
    assert [e.message for e in progress if e.step == "denoise"] == ["step 1", "step 2"]
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions)


def test_same_seed_same_mesh_other_seed_other_mesh(hunyuan) -> None:
    first = reconstruct(hunyuan, png_bytes(64, mode="RGBA"), options(texture=False), seed=5)[0]
    again = reconstruct(hunyuan, png_bytes(64, mode="RGBA"), options(texture=False), seed=5)[0]
    other = reconstruct(hunyuan, png_bytes(64, mode="RGBA"), options(texture=False), seed=6)[0]
    assert first["mesh.glb"].data == again["mesh.glb"].data
    assert first["mesh.glb"].data != other["mesh.glb"].data


def test_texture_is_painted_and_baked_into_the_glb(hunyuan) -> None:
    files, result, progress = reconstruct(hunyuan, png_bytes(64, mode="RGBA"), options(texture=True))
    scene = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb")
    mesh = next(iter(scene.geometry.values()))
    assert mesh.visual.kind == "texture"
    texture = mesh.visual.material.baseColorTexture
    assert texture.size == (128, 128)  # THREEGEN_RECON_HUNYUAN3D_TEXTURE_SIZE
    assert np.asarray(texture).std() > 0  # painted, not a flat fill
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert {"delight", "paint_views", "bake"} <= set(steps(progress))
    assert "texture" in [t.step for t in result.timings]


def test_bad_options_name_the_field(hunyuan) -> None:
    cases = {
        "options.hunyuan3d.memory_profile": options(memory_profile=9),
        "options.hunyuan3d.octree_resolution": options(octree_resolution=16),
        "options.hunyuan3d.steps": options(steps=500),
        "options.hunyuan3d.guidance_scale": options(guidance_scale=50.0),
    }
    for field, request_options in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(hunyuan, png_bytes(64, mode="RGBA"), request_options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in dict(field_violations(caught.value)), field
    with pytest.raises(grpc.RpcError) as caught:  # the family takes no mask
        reconstruct(hunyuan, png_bytes(64, mode="RGBA"), options(), mask=png_bytes(64))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mask" in dict(field_violations(caught.value))


def test_texture_requested_where_no_texture_models_are_deployed(tiny_families) -> None:
    service = recon_service(
        tiny_families,
        families=("hunyuan3d",),
        default_family="hunyuan3d",
        hunyuan3d_model=str(tiny_families["hunyuan3d"]),
        hunyuan3d_paint_model="",
    )
    with serving(service) as server:
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(server, png_bytes(64, mode="RGBA"), options(texture=True))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            "THREEGEN_RECON_HUNYUAN3D_PAINT_MODEL"
            in dict(field_violations(caught.value))["options.hunyuan3d.texture"]
        )
        # Texture left unset: the mesh comes back untextured and the progress says why.
        files, _, progress = reconstruct(server, png_bytes(64, mode="RGBA"), options())
        assert "mesh.glb" in files
        assert any("no texture models" in e.message for e in progress)


def test_a_family_that_fails_to_load_is_reported_and_the_others_serve(tiny_families, tmp_path) -> None:
    broken = tmp_path / "Hunyuan3D-2"
    shutil.copytree(tiny_families["hunyuan3d"] / "hunyuan3d-dit-v2-0", broken / "hunyuan3d-dit-v2-0")
    (broken / "hunyuan3d-dit-v2-0" / "model.fp16.safetensors").unlink()
    service = recon_service(
        tiny_families,
        families=("triposr", "hunyuan3d"),
        hunyuan3d_model=str(broken),
        hunyuan3d_paint_model="",
    )
    with serving(service) as server:
        with server.channel() as channel:
            stub = recon_pb2_grpc.ReconServiceStub(channel)
            models = {m.name: m for m in stub.ListModels(recon_pb2.ListModelsRequest(), timeout=10).models}
        assert models["hunyuan3d"].state == common_pb2.MODEL_STATE_ERROR
        assert "holds none of the checkpoint names model.fp16.safetensors" in models["hunyuan3d"].error
        assert models["triposr"].state == common_pb2.MODEL_STATE_READY
        files, _, _ = reconstruct(server, png_bytes(64, mode="RGBA"), triposr(48))
        assert "mesh.glb" in files
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(server, png_bytes(64, mode="RGBA"), options(texture=False))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "checkpoint names" in caught.value.details()
