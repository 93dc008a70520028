"""TRELLIS through recon's gRPC API, on tiny checkpoints in the published layout (CPU).

The networks are threegen's own (services/recon/families/trellis/networks.py) loaded strictly
from pipeline.json + ckpts/<stem>.json|.safetensors; image conditioning reads a DINOv2 hub
checkpoint, text conditioning a CLIP folder.
"""

from __future__ import annotations

import io
import json
import shutil

import grpc
import numpy as np
import pytest
import trimesh

from services.render.geometry import Points, load_geometry
from tests.conftest import recon_service
from tests.helpers import png_bytes, reconstruct, steps
from tests.servers import serving
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc


def trellis_settings(tiny: dict) -> dict:
    root = tiny["trellis"]
    return dict(
        families=("triposr", "trellis"),
        trellis_model=str(root / "image"),
        trellis_text_model=str(root / "text"),
        trellis_dinov2=str(root / "dinov2"),
    )


@pytest.fixture(scope="module")
def trellis(tiny_families):
    with serving(recon_service(tiny_families, **trellis_settings(tiny_families))) as server:
        yield server


def options(output: int = common_pb2.GEOMETRY_KIND_MESH, **kwargs) -> recon_pb2.ReconOptions:
    return recon_pb2.ReconOptions(
        family=common_pb2.FAMILY_TRELLIS, output=output, trellis=recon_pb2.TrellisOptions(**kwargs)
    )


def test_image_to_textured_glb_simplified_to_the_asked_fraction(trellis) -> None:
    files, result, progress = reconstruct(
        trellis, png_bytes(64, mode="RGBA"), options(simplify=0.9, texture_size=256)
    )
    assert set(files) == {"mesh.glb"}
    scene = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb")
    mesh = next(iter(scene.geometry.values()))
    assert mesh.visual.kind == "texture"
    assert mesh.visual.material.baseColorTexture.size == (256, 256)
    simplified = next(e.message for e in progress if e.step == "simplify")
    before, after = (int(n) for n in simplified.removesuffix(" faces").split(" -> "))
    assert after == len(mesh.faces) and after <= 0.12 * before
    assert [t.step for t in result.timings][:5] == [
        "decode_input",
        "encode",
        "sparse_structure",
        "structured_latent",
        "decode_mesh",
    ]
    assert {"sparse_structure", "structured_latent"} <= set(steps(progress))
    assert result.family == common_pb2.FAMILY_TRELLIS and result.stats.face_count == len(mesh.faces)
    # glTF is y-up: the z-up TRELLIS box [-0.5, 0.5] maps onto y.
    assert np.abs(mesh.vertices).max() <= 0.51


def test_gaussian_splats_as_a_3dgs_ply_render_can_read(trellis) -> None:
    files, result, _ = reconstruct(
        trellis, png_bytes(64, mode="RGBA"), options(common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
    )
    assert set(files) == {"gaussians.ply"}
    data = files["gaussians.ply"].data
    header = data[: data.index(b"end_header\n")].decode()
    assert "property float f_dc_0" in header and "property float rot_3" in header
    count = int(header.split("element vertex ")[1].split("\n")[0])
    assert count % 4 == 0 and count == result.stats.point_count  # 4 Gaussians per voxel (tiny decoder)
    splats = load_geometry(data, "gaussians.ply", common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
    assert isinstance(splats, Points) and len(splats.positions) == count
    assert np.allclose(np.linalg.norm(splats.rotations, axis=1), 1, atol=1e-5)
    assert np.abs(splats.positions).max() <= 0.5 + 0.75 / 16  # centres +- 0.75 voxel (tiny grid: 16)


def test_mesh_with_gaussians_returns_both(trellis) -> None:
    files, _, _ = reconstruct(
        trellis, png_bytes(64, mode="RGBA"), options(with_gaussians=True, texture_size=128)
    )
    assert set(files) == {"mesh.glb", "gaussians.ply"}


def test_text_prompt_without_image_uses_the_text_model(trellis) -> None:
    files, result, _ = reconstruct(trellis, None, options(texture_size=128), prompt="a wooden chair")
    assert "mesh.glb" in files and result.stats.face_count > 0


def test_same_seed_same_result(trellis) -> None:
    first = reconstruct(trellis, png_bytes(64, mode="RGBA"), options(texture_size=128), seed=9)[0]
    again = reconstruct(trellis, png_bytes(64, mode="RGBA"), options(texture_size=128), seed=9)[0]
    other = reconstruct(trellis, png_bytes(64, mode="RGBA"), options(texture_size=128), seed=10)[0]
    assert first["mesh.glb"].data == again["mesh.glb"].data != other["mesh.glb"].data


def test_bad_options_name_the_field(trellis) -> None:
    cases = {
        "options.trellis.simplify": options(simplify=1.5),
        "options.trellis.texture_size": options(texture_size=64),
        "options.trellis.slat_steps": options(slat_steps=500),
        "options.trellis.sparse_structure_guidance": options(sparse_structure_guidance=50.0),
        "options.output": options(common_pb2.GEOMETRY_KIND_POINT_CLOUD),
    }
    for field, request_options in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(trellis, png_bytes(64, mode="RGBA"), request_options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in dict(field_violations(caught.value)), field


def test_loader_errors_name_the_file(tiny_families, tmp_path) -> None:
    broken = tmp_path / "image"
    shutil.copytree(tiny_families["trellis"] / "image", broken)
    (broken / "ckpts" / "slat_flow.safetensors").unlink()
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_families["trellis"] / "image", mismatched)
    spec = json.loads((mismatched / "ckpts" / "ss_dec.json").read_text())
    spec["args"]["channels"] = [32, 16, 8]
    (mismatched / "ckpts" / "ss_dec.json").write_text(json.dumps(spec))
    for folder, expected in (
        (broken, "ckpts/slat_flow.json / .safetensors"),
        (mismatched, "ss_dec.safetensors"),
    ):
        settings = dict(trellis_settings(tiny_families), trellis_model=str(folder), trellis_text_model="")
        with serving(recon_service(tiny_families, **settings)) as server, server.channel() as channel:
            models = {
                m.name: m
                for m in recon_pb2_grpc.ReconServiceStub(channel)
                .ListModels(recon_pb2.ListModelsRequest(), timeout=10)
                .models
            }
        assert models["trellis"].state == common_pb2.MODEL_STATE_ERROR
        assert expected in models["trellis"].error, models["trellis"].error
    assert "other shapes" in models["trellis"].error
