"""threegen's MoGe v1 (services/recon/moge.py): loading in the published format, and `infer`'s
contract. Equivalence with upstream's code was measured outside the repo (max |Δ| 1.8e-7 on
points, 0 on depth, mask and intrinsics for the tiny checkpoint); these tests pin the behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from services.recon.moge import MOGE_VITL_CONFIG, MoGeModel, load_moge, write_tiny_moge
from threegen.weights import CheckpointMismatch, WeightsNotFound

# Ruicheng/moge-vitl at full size, counted by building upstream's MoGeModel (microsoft/MoGe
# a8c3734, the commit SAM 3D Objects pins) from the published model_config: 421 state-dict
# entries, 314,174,020 parameters (304,368,640 in the DINOv2 ViT-L/14, 9,805,380 in the head) and
# 6 buffer values (image_mean, image_std).
VITL_KEYS = 421
VITL_PARAMS = 314_174_020
VITL_BACKBONE_PARAMS = 304_368_640


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("moge")
    write_tiny_moge(folder)
    return folder


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> MoGeModel:
    return load_moge(str(tiny_dir))


def test_tiny_checkpoint_is_small_and_in_the_published_format(tiny_dir: Path) -> None:
    path = tiny_dir / "model.pt"
    assert path.stat().st_size < 2_000_000
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model_config", "model"}
    assert checkpoint["model_config"]["encoder"] == "dinov2_vits14"


def test_loads_from_a_folder_and_from_a_file(tiny_dir: Path, model: MoGeModel) -> None:
    from_file = load_moge(tiny_dir / "model.pt")
    for (name, a), b in zip(model.state_dict().items(), from_file.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not model.training
    assert model.dtype == torch.float32


@pytest.mark.parametrize("shape", [(3, 60, 80), (2, 3, 50, 70)])
def test_infer_shapes_and_dtypes(model: MoGeModel, shape: tuple[int, ...]) -> None:
    out = model.infer(torch.rand(*shape, generator=torch.Generator().manual_seed(1)))
    *batch, _, height, width = shape
    assert out["points"].shape == (*batch, height, width, 3)
    assert out["depth"].shape == (*batch, height, width)
    assert out["mask"].shape == (*batch, height, width)
    assert out["intrinsics"].shape == (*batch, 3, 3)
    assert out["points"].dtype == out["depth"].dtype == out["intrinsics"].dtype == torch.float32
    assert out["mask"].dtype == torch.bool


def test_infer_is_finite_inside_the_mask_and_consistent(model: MoGeModel) -> None:
    image = torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(2))
    out = model.infer(image)
    mask, points, depth, k = out["mask"], out["points"], out["depth"], out["intrinsics"]
    assert 0.1 < mask.float().mean() < 0.9  # the tiny heads are steered to keep about half
    assert torch.isfinite(points[mask]).all() and torch.isfinite(depth[mask]).all()
    assert torch.isinf(points[~mask]).all() and torch.isinf(depth[~mask]).all()
    assert (depth[mask] > 0).all()
    assert torch.equal(points[..., 2][mask], depth[mask])
    # Normalised intrinsics: principal point at the centre, fx / fy = H / W (square pixels).
    assert k[0, 2] == k[1, 2] == 0.5 and k[2, 2] == 1
    assert math.isclose(float(k[0, 0] / k[1, 1]), 60 / 80, rel_tol=1e-5)
    # Projection through the intrinsics lands on the pixel centres (OpenCV: y down, z forward).
    u = (points[..., 0] / points[..., 2]) * k[0, 0] + k[0, 2]
    v = (points[..., 1] / points[..., 2]) * k[1, 1] + k[1, 2]
    centres_u = ((torch.arange(80) + 0.5) / 80).expand(60, 80)
    centres_v = ((torch.arange(60) + 0.5) / 60)[:, None].expand(60, 80)
    assert torch.allclose(u[mask], centres_u[mask], atol=1e-5)
    assert torch.allclose(v[mask], centres_v[mask], atol=1e-5)


def test_infer_is_deterministic_and_options_behave(model: MoGeModel) -> None:
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(3))
    first, second = model.infer(image), model.infer(image)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    unmasked = model.infer(image, apply_mask=False)
    assert torch.isfinite(unmasked["points"]).all()
    assert torch.equal(unmasked["points"][first["mask"]], first["points"][first["mask"]])
    fixed = model.infer(image, fov_x=60.0)
    fx = float(fixed["intrinsics"][0, 0])
    assert math.isclose(2 * math.degrees(math.atan(0.5 / fx)), 60.0, rel_tol=1e-5)
    # A different resolution level means a different token budget, hence another point map.
    low = model.infer(image, resolution_level=0)
    assert not torch.equal(
        low["depth"][first["mask"] & low["mask"]], first["depth"][first["mask"] & low["mask"]]
    )


def test_full_size_config_matches_the_published_checkpoint() -> None:
    with torch.device("meta"):
        full = MoGeModel(**MOGE_VITL_CONFIG)
    state = full.state_dict()
    assert len(state) == VITL_KEYS
    assert sum(p.numel() for p in full.parameters()) == VITL_PARAMS
    assert sum(v.numel() for k, v in state.items() if k.startswith("backbone.")) == VITL_BACKBONE_PARAMS
    assert full.num_tokens_range == (1275, 2551)  # from trained_area_range [250000, 500000] / 14**2
    assert full.num_tokens(9) == 2551 and full.num_tokens(0) == 1275
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["backbone.pos_embed"] == (1, 1370, 1024)
    assert shapes["backbone.blocks.23.ls2.gamma"] == (1024,)
    assert "backbone.register_tokens" not in shapes
    assert shapes["head.projects.3.weight"] == (512, 1024, 1, 1)
    assert shapes["head.upsample_blocks.0.0.0.weight"] == (514, 256, 2, 2)
    assert shapes["head.upsample_blocks.2.2.layers.3.weight"] == (128,)
    assert shapes["head.output_block.0.2.weight"] == (3, 32, 1, 1)
    assert shapes["head.output_block.1.2.weight"] == (1, 32, 1, 1)
    assert shapes["image_mean"] == (1, 3, 1, 1)


def test_wrong_shape_is_refused_naming_the_key(tmp_path: Path, tiny_dir: Path) -> None:
    checkpoint = torch.load(tiny_dir / "model.pt", map_location="cpu", weights_only=True)
    checkpoint["model"]["head.projects.0.weight"] = torch.zeros(8, 64, 1, 1)
    torch.save(checkpoint, tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatch, match=r"head\.projects\.0\.weight"):
        load_moge(tmp_path)


def test_missing_weights_raise_weights_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFound):  # a repo id that is in no cache
        load_moge("threegen-test/no-such-moge")
    with pytest.raises(WeightsNotFound):
        load_moge(str(tmp_path / "absent"))
    with pytest.raises(WeightsNotFound):  # a folder without model.pt
        load_moge(tmp_path)
