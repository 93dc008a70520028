"""recon over gRPC: phases reported in order, background removal on opaque inputs, GLB output."""

from __future__ import annotations

import io

import grpc
import pytest
import trimesh

from tests.conftest import recon_service
from tests.helpers import png_bytes, reconstruct, steps
from tests.servers import serving
from threegen.common.v1 import common_pb2
from threegen.recon.v1 import recon_pb2


def options(**kwargs) -> recon_pb2.ReconOptions:
    return recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(mc_resolution=48), **kwargs)


def test_opaque_image_is_cut_out_then_every_phase_reported(stack) -> None:
    files, result, progress = reconstruct(stack.recon, png_bytes(96), options())
    assert steps(progress) == [
        "remove_background",
        "preprocess",
        "tokenize",
        "backbone",
        "query",
        "marching_cubes",
        "colors",
    ]
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions)
    assert all(p.stage == common_pb2.STAGE_RECONSTRUCT for p in progress)
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    assert len(mesh.faces) == result.stats.face_count > 0
    assert {t.step for t in result.timings} >= {"triplanes", "query", "marching_cubes", "colors", "export"}


def test_transparent_image_skips_background_removal(stack) -> None:
    _, _, progress = reconstruct(stack.recon, png_bytes(96, mode="RGBA"), options())
    assert "remove_background" not in steps(progress)
    _, _, progress = reconstruct(stack.recon, png_bytes(96), options(remove_background=False))
    assert "remove_background" not in steps(progress)


def test_missing_rembg_model_degrades_by_default_and_fails_when_asked(tiny, tmp_path) -> None:
    with serving(recon_service(tiny, rembg_model=str(tmp_path / "absent.onnx"))) as server:
        _, result, progress = reconstruct(server, png_bytes(96), options())
        assert any("background removal unavailable" in p.message for p in progress)
        assert result.stats.face_count > 0
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(server, png_bytes(96), options(remove_background=True))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "absent.onnx" in caught.value.details()
