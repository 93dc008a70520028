"""XCube through recon's gRPC API, on tiny checkpoints in XCube's repository layout (CPU).

The networks are threegen's own (services/recon/families/xcube/), loaded strictly from the
Lightning checkpoints (EMA weights) with the configs read as XCube reads them (includes).
"""

from __future__ import annotations

import io
import shutil

import grpc
import numpy as np
import pytest
import torch
import trimesh

from services.recon.families.xcube import loader
from services.render.geometry import Points, load_geometry
from tests.conftest import gateway_service, recon_service
from tests.helpers import reconstruct, steps
from tests.servers import serving
from tests.test_end_to_end import run_generate, small_request
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.recon.v1 import recon_pb2
from threegen.weights import CheckpointMismatch, WeightsNotFound


def xcube_settings(tiny: dict, **overrides) -> dict:
    root = tiny["xcube"]
    settings = dict(
        families=("triposr", "xcube"),
        xcube_model=str(root),
        xcube_text_encoder=str(root / "text"),
        xcube_tokenizer=str(root / "tokenizer"),
    )
    return {**settings, **overrides}


@pytest.fixture(scope="module")
def xcube(tiny_families):
    with serving(recon_service(tiny_families, **xcube_settings(tiny_families))) as server:
        yield server


def options(output: int = common_pb2.GEOMETRY_KIND_UNSPECIFIED, **kwargs) -> recon_pb2.ReconOptions:
    return recon_pb2.ReconOptions(
        family=common_pb2.FAMILY_XCUBE, output=output, xcube=recon_pb2.XCubeOptions(**kwargs)
    )


def cloud(data: bytes) -> Points:
    points = load_geometry(data, "ply")
    assert isinstance(points, Points) and points.normals is not None
    return points


def test_text_to_fine_and_coarse_points_with_unit_normals(xcube) -> None:
    files, result, progress = reconstruct(xcube, None, options(ddim_steps=3), prompt="a wooden chair", seed=3)
    assert set(files) == {"points.ply", "points_coarse.ply"}
    fine, coarse = cloud(files["points.ply"].data), cloud(files["points_coarse.ply"].data)
    assert result.stats.point_count == len(fine.positions) > 0 and len(coarse.positions) > 0
    assert np.allclose(np.linalg.norm(fine.normals, axis=1), 1.0, atol=1e-3)
    # voxel centres inside the unit box; the fine grid is 4x finer than the coarse one here
    assert np.abs(fine.positions).max() < 0.5 and np.abs(coarse.positions).max() < 0.5
    fine_step = np.diff(np.unique(fine.positions[:, 0])).min()
    coarse_step = np.diff(np.unique(coarse.positions[:, 0])).min()
    assert fine_step == pytest.approx(coarse_step / 4, rel=1e-4)
    assert {"coarse", "fine"} <= set(steps(progress))
    assert [t.step for t in result.timings][1:4] == ["encode_text", "coarse", "fine"]
    assert result.family == common_pb2.FAMILY_XCUBE


def test_coarse_only_without_the_fine_stage(xcube) -> None:
    files, _, progress = reconstruct(xcube, None, options(ddim_steps=2, use_fine=False), prompt="a vase")
    assert set(files) == {"points.ply"}
    assert "fine" not in steps(progress)


def test_seed_prompt_and_guidance_decide_the_result(xcube) -> None:
    def points(seed: int, prompt: str = "a car", **kwargs) -> bytes:
        return reconstruct(xcube, None, options(ddim_steps=2, **kwargs), prompt=prompt, seed=seed)[0][
            "points.ply"
        ].data

    first = points(11)
    assert first == points(11)
    assert first != points(12)
    assert first != points(11, prompt="a boat")
    assert points(11, guidance_scale=1.0) != points(11, guidance_scale=3.0)


def test_bad_input_names_the_field(xcube) -> None:
    cases = {
        "options.xcube.ddim_steps": (options(ddim_steps=2000), "a car"),
        "options.xcube.guidance_scale": (options(guidance_scale=50.0), "a car"),
        "options.output": (options(common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT), "a car"),
        "prompt": (options(), ""),
    }
    for field, (request_options, prompt) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            reconstruct(xcube, None, request_options, prompt=prompt)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in dict(field_violations(caught.value)), (field, caught.value.details())


def test_loader_finds_both_layouts_and_names_what_is_missing(tiny_families, tmp_path) -> None:
    source = tiny_families["xcube"]
    with pytest.raises(WeightsNotFound, match="XCube folder"):
        loader.find(str(tmp_path / "nowhere"))
    with pytest.raises(WeightsNotFound, match=r"coarse_diffusion/last\.ckpt"):
        loader.find(str(tmp_path))
    # seed 004's layout: objaverse_coarse/{config.yaml, last.ckpt}, config merged, vae config beside it
    seed = tmp_path / "seed"
    (seed / "objaverse_coarse").mkdir(parents=True)
    config = loader.parse_config(source / loader.REPO_LAYOUT["coarse"][0])
    vae = loader.parse_config(source / config["vae_config"])
    import yaml

    (seed / "objaverse_coarse" / "vae.yaml").write_text(yaml.safe_dump(vae))
    (seed / "objaverse_coarse" / "config.yaml").write_text(
        yaml.safe_dump({**config, "vae_config": "vae.yaml"})
    )
    shutil.copy(source / loader.REPO_LAYOUT["coarse"][1], seed / "objaverse_coarse" / "last.ckpt")
    files = loader.find(str(seed))
    assert files.fine is None and files.coarse.vae_config["voxel_size"] == vae["voxel_size"]


def test_checkpoints_load_tensors_only_unless_trusted(tiny_families, tmp_path) -> None:
    root = tmp_path / "xcube"
    shutil.copytree(tiny_families["xcube"], root)
    path = root / loader.REPO_LAYOUT["coarse"][1]
    data = torch.load(path, weights_only=True)
    data["hyper_parameters"] = {"callback": print}  # a pickled function, as Lightning may store objects
    torch.save(data, path)
    with pytest.raises(CheckpointMismatch, match="TRUST_CHECKPOINTS"):
        loader.load_checkpoint(path)
    assert "unet.out.2.weight" in loader.load_checkpoint(path, trusted=True)
    settings = xcube_settings(tiny_families, xcube_model=str(root), xcube_trust_checkpoints=True)
    with serving(recon_service(tiny_families, **settings)) as server:
        files, _, _ = reconstruct(server, None, options(ddim_steps=2, use_fine=False), prompt="a chair")
    assert "points.ply" in files


def test_through_the_gateway_text_to_points_and_a_reconstructed_mesh(stack, tiny_families) -> None:
    settings = xcube_settings(tiny_families, families=("xcube",), default_family="xcube")
    with (
        serving(recon_service(tiny_families, **settings)) as xcube_recon,
        serving(
            gateway_service(
                stack.imagegen.address,
                stack.recon.address,
                stack.render.address,
                recon_routes=(f"xcube={xcube_recon.address}",),
            )
        ) as gateway,
    ):
        request = small_request(seed=70076)
        request.recon_options.CopyFrom(options(ddim_steps=2))
        request.outputs.reconstruct_surface.depth = 6  # render's screened Poisson: XCube's mesh
        _, files, result = run_generate(gateway.address, request)
    assert result.family == common_pb2.FAMILY_XCUBE
    assert "image.png" not in files  # text-native: no image stage
    # the fine points went to render, which meshed them for the exports and the preview; the
    # points themselves reach the client too
    assert {"mesh.glb", "mesh.ply", "points.ply", "points_coarse.ply", "preview.mp4"} <= set(files)
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0
    points = trimesh.load(io.BytesIO(files["points.ply"].data), file_type="ply")
    assert len(points.vertices) > 0 and not hasattr(points, "faces")
    assert {a.name for a in result.artifacts} == set(files)


def test_published_objaverse_layout_on_the_meta_device(tmp_path) -> None:
    """The full-size configs, read as XCube reads them (includes), build networks with the published
    checkpoints' tensor counts and sizes (XCube's own classes on the meta device, 2026-11-23)."""
    import yaml

    from services.recon.families.xcube.tiny import configs
    from services.recon.families.xcube.unet_dense import DenseUNet, dense_unet_args
    from services.recon.families.xcube.unet_sparse import SparseUNet, sparse_unet_args
    from services.recon.families.xcube.vae import XCubeVAE

    for relative, content in configs(full=True).items():
        path = tmp_path / "configs" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content))
    published = {
        "coarse": ((864, 1_492_677_896), (95, 236_318_779)),
        "fine": ((794, 79_587_528), (78, 14_863_417)),
    }
    with torch.device("meta"):
        for stage, (config_path, _) in loader.REPO_LAYOUT.items():
            config = loader.parse_config(tmp_path / config_path)
            vae_config = loader.parse_config(tmp_path / config["vae_config"])
            if stage == "coarse":
                unet = DenseUNet(**dense_unet_args(config, vae_config=vae_config))
            else:
                unet = SparseUNet(**sparse_unet_args(config, vae_config=vae_config))
            for module, expected in zip((unet, XCubeVAE(vae_config)), published[stage], strict=True):
                state = module.state_dict()
                assert (len(state), sum(v.numel() for v in state.values())) == expected, stage


def test_out_of_gpu_memory_is_resource_exhausted_and_the_service_goes_on(xcube, monkeypatch) -> None:
    """An injected CUDA OOM in the engine (this machine has no GPU to fill)."""
    from services.recon.families.xcube.engine import XCubeEngine

    real, failed = XCubeEngine.run, []

    def once_out_of_memory(self, *args, **kwargs):
        if not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(XCubeEngine, "run", once_out_of_memory)
    with pytest.raises(grpc.RpcError) as caught:
        reconstruct(xcube, None, options(ddim_steps=2), prompt="a chair")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "xcube ran out of GPU memory" in caught.value.details()
    assert "points.ply" in reconstruct(xcube, None, options(ddim_steps=2), prompt="a chair")[0]
