"""SAM 3D Objects through recon's gRPC API, on tiny checkpoints in the published layout (CPU).

The networks are threegen's own (services/recon/families/sam3d/, TRELLIS's for stage 2 and the
decoders), loaded strictly from pipeline.yaml + <model>.yaml + <model>.ckpt; the point map comes
from a tiny MoGe named by pipeline.yaml. Full-size key sets are checked on the meta device.
"""

from __future__ import annotations

import io
import json
import shutil

import grpc
import numpy as np
import pytest
import torch
import trimesh
import yaml
from PIL import Image

from services.recon.families.sam3d import loader
from services.recon.families.sam3d.engine import Sam3dEngine
from services.recon.families.sam3d.tiny import FULL, configs, pipeline
from services.render.geometry import Points, load_geometry
from tests.conftest import gateway_service, recon_service
from tests.helpers import reconstruct, steps
from tests.servers import serving
from tests.test_end_to_end import run_generate, small_request
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc
from threegen.weights import CheckpointMismatch, WeightsNotFound


def sam3d_settings(tiny: dict) -> dict:
    return dict(families=("triposr", "sam3d"), sam3d_model=str(tiny["sam3d"]))


@pytest.fixture(scope="module")
def sam3d(tiny_families):
    with serving(recon_service(tiny_families, **sam3d_settings(tiny_families))) as server:
        yield server


def options(output: int = common_pb2.GEOMETRY_KIND_MESH, **kwargs) -> recon_pb2.ReconOptions:
    return recon_pb2.ReconOptions(
        family=common_pb2.FAMILY_SAM3D, output=output, sam3d=recon_pb2.Sam3dOptions(**kwargs)
    )


def photo(width: int = 80, height: int = 64) -> bytes:
    """An opaque RGB picture: a green box on a red ground."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = 200
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (30, 160, 90)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(width: int = 80, height: int = 64, box: tuple[int, int, int, int] | None = None) -> bytes:
    x0, y0, x1, y1 = box or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    pixels = np.zeros((height, width), np.uint8)
    pixels[y0:y1, x0:x1] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run(server, output=common_pb2.GEOMETRY_KIND_MESH, mask: bytes | None = None, seed: int = 1, **kwargs):
    return reconstruct(
        server, photo(), options(output, **kwargs), mask=mask if mask is not None else mask_png(), seed=seed
    )


def test_image_and_mask_to_vertex_coloured_glb_and_pose(sam3d) -> None:
    files, result, progress = run(sam3d, with_texture=False, simplify=0.5)
    assert set(files) == {"mesh.glb", "pose.json"}
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    assert mesh.visual.kind == "vertex" and len(mesh.faces) == result.stats.face_count > 0
    assert np.abs(mesh.vertices).max() <= 0.51  # object-local box [-0.5, 0.5]^3, y-up
    pose = json.loads(files["pose.json"].data)
    assert len(pose["rotation"]) == 4 and abs(np.linalg.norm(pose["rotation"]) - 1) < 1e-4
    assert len(pose["translation"]) == 3 and len(pose["scale"]) == 3 and min(pose["scale"]) > 0
    assert [t.step for t in result.timings][1:5] == [
        "point_map",
        "sparse_structure",
        "structured_latent",
        "decode_mesh",
    ]
    assert {"sparse_structure", "structured_latent"} <= set(steps(progress))
    assert result.family == common_pb2.FAMILY_SAM3D


def test_textured_glb_by_default(sam3d) -> None:
    files, _, _ = run(sam3d, texture_size=128)
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    assert mesh.visual.kind == "texture"
    assert mesh.visual.material.baseColorTexture.size == (128, 128)


def test_gaussian_splats_as_a_3dgs_ply(sam3d) -> None:
    files, result, _ = run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
    assert set(files) == {"gaussians.ply", "pose.json"}
    splats = load_geometry(files["gaussians.ply"].data, "ply")
    assert isinstance(splats, Points) and len(splats.positions) == result.stats.point_count > 0
    assert splats.scales is not None and splats.opacities is not None
    assert b"f_dc_0" in files["gaussians.ply"].data[:2000]


def test_the_mask_selects_the_object(sam3d) -> None:
    """Another mask, another object crop and point-map region: another result."""
    first = run(sam3d, with_texture=False, seed=5)[0]
    again = run(sam3d, with_texture=False, seed=5)[0]
    other = run(sam3d, with_texture=False, seed=5, mask=mask_png(box=(4, 4, 30, 30)))[0]
    assert first["mesh.glb"].data == again["mesh.glb"].data
    assert first["pose.json"].data != other["pose.json"].data


def test_same_seed_same_result_other_seed_other(sam3d) -> None:
    first = run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT, seed=7)[0]
    again = run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT, seed=7)[0]
    other = run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT, seed=8)[0]
    assert first["gaussians.ply"].data == again["gaussians.ply"].data != other["gaussians.ply"].data


def test_bad_input_names_the_field_and_the_service_keeps_serving(sam3d) -> None:
    cases = {
        "options.sam3d.simplify": (options(simplify=1.5), mask_png()),
        "options.sam3d.texture_size": (options(texture_size=64), mask_png()),
        "options.sam3d.slat_steps": (options(slat_steps=500), mask_png()),
        "options.sam3d.sparse_structure_guidance": (options(sparse_structure_guidance=50.0), mask_png()),
        "options.output": (options(common_pb2.GEOMETRY_KIND_POINT_CLOUD), mask_png()),
        "mask": (options(), mask_png(box=(0, 0, 0, 0))),  # empty: upstream crashes on it
    }
    for field, (request_options, mask) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(sam3d, photo(), request_options, mask=mask)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in dict(field_violations(caught.value)), (field, caught.value.details())
    assert run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)[1].stats.point_count > 0


def test_published_layout_on_the_meta_device() -> None:
    """Full-size networks built from the published yaml have the published checkpoints' keys.

    Counts from upstream's classes instantiated on the meta device (2026-11-23, sam3d 0.1.2's
    vendored sam3d_objects): tensors and parameters per checkpoint part."""
    published = {
        "ss_generator": ((945, 964_156_437), (722, 634_485_760)),
        "slat_generator": ((526, 600_432_520), (699, 626_054_144)),
    }
    folder_configs = configs(FULL)
    files = loader.PipelineFiles.__new__(loader.PipelineFiles)
    files.config = folder_configs.__getitem__  # type: ignore[method-assign]
    with torch.device("meta"):
        for name, expected in published.items():
            network, embedder = loader.generator_networks(files, name)
            for module, (tensors, elements) in zip((network, embedder), expected, strict=True):
                state = module.state_dict()
                assert (len(state), sum(v.numel() for v in state.values())) == (tensors, elements), name
        for name, expected in (
            ("ss_decoder", (74, 73_671_201)),
            ("slat_decoder_gs", (101, 85_369_120)),
            ("slat_decoder_mesh", (120, 90_926_693)),
        ):
            state = loader.decoder_network(files, name).state_dict()
            assert (len(state), sum(v.numel() for v in state.values())) == expected, name
    assert pipeline(FULL)["ss_inference_steps"] == 25


def test_loader_errors_name_the_file(tiny_families, tmp_path) -> None:
    source = tiny_families["sam3d"] / "checkpoints"
    with pytest.raises(WeightsNotFound, match=r"pipeline\.yaml"):
        loader.find(str(tmp_path))
    shutil.copytree(source, tmp_path / "missing")
    (tmp_path / "missing" / "slat_generator.ckpt").unlink()
    with pytest.raises(WeightsNotFound, match=r"slat_generator\.ckpt"):
        loader.build_generator(loader.find(str(tmp_path / "missing")), "slat_generator", torch.float32, "cpu")
    shutil.copytree(source, tmp_path / "other")
    config = yaml.safe_load((tmp_path / "other" / "ss_decoder.yaml").read_text())
    config["channels"] = [32, 16, 16]
    (tmp_path / "other" / "ss_decoder.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointMismatch, match=r"ss_decoder\.ckpt.*other shapes"):
        loader.build_decoder(loader.find(str(tmp_path / "other")), "ss_decoder", torch.float32, "cpu")
    pipeline_yaml = yaml.safe_load((source / "pipeline.yaml").read_text())
    shutil.copytree(source, tmp_path / "no_depth")
    no_depth = yaml.safe_dump({**pipeline_yaml, "depth_model": None})
    (tmp_path / "no_depth" / "pipeline.yaml").write_text(no_depth)
    with pytest.raises(WeightsNotFound, match="needs a depth model"):
        Sam3dEngine(loader.find(str(tmp_path / "no_depth")), "cpu")
    config["_target_"] = "somewhere.Else"
    (tmp_path / "other" / "ss_decoder.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointMismatch, match="'Else'"):
        loader.build_decoder(loader.find(str(tmp_path / "other")), "ss_decoder", torch.float32, "cpu")


def test_a_broken_layout_marks_the_model_in_error(tiny_families, tmp_path) -> None:
    shutil.copytree(tiny_families["sam3d"], tmp_path / "sam3d")
    (tmp_path / "sam3d" / "checkpoints" / "ss_generator.ckpt").write_bytes(b"not a pickle")
    settings = dict(sam3d_settings(tiny_families), sam3d_model=str(tmp_path / "sam3d"))
    with serving(recon_service(tiny_families, **settings)) as server, server.channel() as channel:
        models = {
            m.name: m
            for m in recon_pb2_grpc.ReconServiceStub(channel)
            .ListModels(recon_pb2.ListModelsRequest(), timeout=10)
            .models
        }
    assert models["sam3d"].state == common_pb2.MODEL_STATE_ERROR
    assert "ss_generator.ckpt" in models["sam3d"].error, models["sam3d"].error


def test_through_the_gateway_mask_in_pose_out(stack, tiny_families) -> None:
    """A sam3d deployment behind the gateway: photo + mask in; mesh, exports, preview and pose out."""
    settings = {**sam3d_settings(tiny_families), "families": ("sam3d",), "default_family": "sam3d"}
    with (
        serving(recon_service(tiny_families, **settings)) as sam3d_recon,
        serving(
            gateway_service(
                stack.imagegen.address,
                stack.recon.address,
                stack.render.address,
                recon_routes=(f"sam3d={sam3d_recon.address}",),
            )
        ) as gateway,
    ):
        request = small_request(seed=70075)
        request.prompt = ""
        request.image = photo()
        request.mask = mask_png()
        request.recon_options.CopyFrom(options(with_texture=False))
        _, files, result = run_generate(gateway.address, request)
    assert result.family == common_pb2.FAMILY_SAM3D
    assert {"mesh.glb", "mesh.ply", "preview.mp4", "pose.json"} <= set(files)
    assert len(json.loads(files["pose.json"].data)["rotation"]) == 4


def test_out_of_gpu_memory_is_resource_exhausted_and_the_service_goes_on(sam3d, monkeypatch) -> None:
    """An injected CUDA OOM in the engine (this machine has no GPU to fill)."""
    from services.recon.families.sam3d.engine import Sam3dEngine

    real, failed = Sam3dEngine.run, []

    def once_out_of_memory(self, *args, **kwargs):
        if not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Sam3dEngine, "run", once_out_of_memory)
    with pytest.raises(grpc.RpcError) as caught:
        run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sam3d ran out of GPU memory" in caught.value.details()
    assert "gaussians.ply" in run(sam3d, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)[0]
