"""SAM 3D Objects condition embedder: published key layout, a tiny strict round trip, config errors."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from services.recon.dinov2 import ViTConfig
from services.recon.families.sam3d.conditioning import build_condition_embedder

# The `module.condition_embedder.backbone` nodes of the published ss_generator.yaml and
# slat_generator.yaml (configuration facts, as shipped with the checkpoints).
SS_NODE = yaml.safe_load(
    """
_target_: sam3d_objects.model.backbone.dit.embedder.embedder_fuser.EmbedderFuser
drop_modalities_weight: [[[pointmap, rgb_pointmap], 1.0]]
dropout_prob: 0.1
embedder_list:
- - {_target_: sam3d_objects.model.backbone.dit.embedder.dino.Dino, dino_model: dinov2_vitl14_reg,
     input_size: 770, normalize_images: true}
  - [[image, cropped], [rgb_image, full]]
- - {_target_: sam3d_objects.model.backbone.dit.embedder.dino.Dino, dino_model: dinov2_vitl14_reg,
     input_size: 770, normalize_images: true}
  - [[mask, cropped], [rgb_image_mask, full]]
- - {_target_: sam3d_objects.model.backbone.dit.embedder.pointmap.PointPatchEmbed, embed_dim: 512,
     input_size: 256, patch_size: 8, remap_output: linear}
  - [[pointmap, cropped], [rgb_pointmap, full]]
force_drop_modalities: null
freeze: true
projection_net_hidden_dim_multiplier: 4.0
use_pos_embedding: learned
"""
)
SLAT_NODE = yaml.safe_load(
    """
_target_: sam3d_objects.model.backbone.dit.embedder.embedder_fuser.EmbedderFuser
embedder_list:
- - {_target_: sam3d_objects.model.backbone.dit.embedder.dino.Dino, dino_model: dinov2_vitl14_reg,
     input_size: 1036, normalize_images: true, prenorm_features: true}
  - [[image, cropped], [rgb_image, full]]
- - {_target_: sam3d_objects.model.backbone.dit.embedder.dino.Dino, dino_model: dinov2_vitl14_reg,
     input_size: 1036, normalize_images: true, prenorm_features: true}
  - [[mask, cropped], [rgb_image_mask, full]]
projection_net_hidden_dim_multiplier: 4.0
use_pos_embedding: learned
"""
)

TINY_DINO = {"dinov2_tiny_reg": ViTConfig(embed_dim=64, depth=2, num_heads=2)}


def _tiny(node: dict) -> dict:
    """The published node with a tiny DINO at 56 px and a small point encoder."""
    node = copy.deepcopy(node)
    for embedder, _ in node["embedder_list"]:
        if embedder["_target_"].endswith("Dino"):
            embedder.update(dino_model="dinov2_tiny_reg", input_size=56)
        else:
            embedder.update(embed_dim=32, input_size=32)
    return node


def _stats(module: torch.nn.Module) -> tuple[int, float]:
    state = module.state_dict()
    return len(state), sum(v.numel() for v in state.values()) / 1e6


@pytest.mark.parametrize(
    ("node", "tensors", "millions", "tokens"),
    [(SS_NODE, 722, 634.49, 4 * (1 + 55 * 55) + 2 * 32 * 32), (SLAT_NODE, 699, 626.05, 4 * (5 + 74 * 74))],
    ids=["ss", "slat"],
)
def test_published_layout(node, tensors, millions, tokens):
    with torch.device("meta"):
        module = build_condition_embedder(node)
    count, total = _stats(module)
    assert count == tensors
    assert total == pytest.approx(millions, abs=0.005)
    assert module.num_tokens() == tokens
    keys = module.state_dict()
    assert keys["idx_emb"].shape == (3, 1024)
    assert keys["module_list.0.backbone.pos_embed"].shape == (1, 1370, 1024)
    assert keys["projection_nets.0.1.w1.weight"].shape == (2816, 1024)
    if "module_list.2.pos_embed" in keys:
        assert keys["module_list.2.pos_embed"].shape == (1, 512, 32, 32)
        assert keys["module_list.2.pos_embed_window"].shape == (1, 65, 512)
        assert keys["projection_nets.2.1.w2.weight"].shape == (1024, 2816)


def _inputs(batch: int = 2, size: int = 40) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = {k: torch.rand(batch, 3, size, size, generator=gen) for k in ("image", "rgb_image")}
    masks = {
        k: (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float() for k in ("mask", "rgb_image_mask")
    }
    points = {k: torch.randn(batch, 3, size, size, generator=gen) for k in ("pointmap", "rgb_pointmap")}
    points["pointmap"][:, :, :5] = float("nan")  # padding rows, as the preprocessor leaves them
    return {**images, **masks, **points, "pointmap_scale": torch.ones(batch, 1)}  # extras are ignored


@pytest.mark.parametrize(
    ("node", "tokens"), [(SS_NODE, 4 * 17 + 2 * 16), (SLAT_NODE, 4 * 21)], ids=["ss", "slat"]
)
def test_tiny_round_trip_and_tokens(node, tokens):
    torch.manual_seed(0)
    cfg = _tiny(node)
    module = build_condition_embedder(cfg, dino_configs=TINY_DINO)
    state = {k: torch.randn_like(v) * 0.1 for k, v in module.state_dict().items()}
    module.load_state_dict(state, strict=True)
    copy_ = build_condition_embedder(cfg, dino_configs=TINY_DINO)
    copy_.load_state_dict(module.state_dict(), strict=True)
    module.eval()
    with torch.no_grad():
        out = module(**_inputs())
    assert out.shape == (2, tokens, 64) == (2, module.num_tokens(), 64)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()

    with torch.no_grad():  # zeroed modality blocks, at the end for ss (pointmaps come last)
        dropped = module(drop_modalities=["rgb_image_mask"], **_inputs())
    per = 17 if "pointmap" in module.input_names else 21  # DINO tokens per input
    assert dropped[:, 3 * per : 4 * per].abs().sum() == 0
    assert torch.equal(dropped[:, : 3 * per], out[:, : 3 * per])
    assert torch.equal(dropped[:, 4 * per :], out[:, 4 * per :])

    with torch.no_grad():  # reduced precision follows the weights
        half = copy.deepcopy(module).to(torch.bfloat16)(**_inputs())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - out).abs().max() < 0.1 * out.abs().max()

    with pytest.raises(KeyError, match="rgb_image"):
        module(**{k: v for k, v in _inputs().items() if k != "rgb_image"})


def test_unknown_target_is_named():
    cfg = _tiny(SS_NODE)
    cfg["embedder_list"][2][0]["_target_"] = "sam3d_objects.model.backbone.dit.embedder.depth.Depth"
    with pytest.raises(ValueError, match=r"embedder\.depth\.Depth"):
        build_condition_embedder(cfg, dino_configs=TINY_DINO)
    cfg = _tiny(SLAT_NODE)
    cfg["_target_"] = "somewhere.Fuser"
    with pytest.raises(ValueError, match=r"somewhere\.Fuser"):
        build_condition_embedder(cfg, dino_configs=TINY_DINO)
    with pytest.raises(ValueError, match="dinov2_tiny_reg"):
        build_condition_embedder(_tiny(SLAT_NODE))  # tiny name not registered
