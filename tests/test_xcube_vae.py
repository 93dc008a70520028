"""XCube VAE (services/recon/families/xcube/vae.py): published state-dict layout and the decode path."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from services.recon.families.xcube import vae as xv
from services.recon.sparse import SparseTensor

# Merged objaverse VAE configs (the values XCube's parse_config_yaml gives that the VAE reads).
COARSE = {
    "model": "autoencoder",
    "tree_depth": 4,
    "voxel_size": 0.0078125,
    "resolution": 128,
    "cut_ratio": 128,
    "use_input_normal": True,
    "use_input_semantic": False,
    "use_input_intensity": False,
    "supervision": {"structure_weight": 20.0, "normal_weight": 300.0},
    "network": {
        "encoder": {"c_dim": 32},
        "unet": {
            "target": "StructPredictionNet",
            "params": {
                "in_channels": 32,
                "num_blocks": "${tree_depth}",
                "f_maps": 128,
                "neck_dense_type": "HAND_CRAFTED",
                "neck_bound": [8, 8, 8],
                "num_res_blocks": 1,
                "use_residual": False,
                "order": "gcr",
                "is_add_dec": False,
                "use_attention": False,
                "use_checkpoint": False,
            },
        },
    },
}
FINE = copy.deepcopy(COARSE)
FINE.update(tree_depth=3, voxel_size=0.001953125, resolution=512, cut_ratio=32)
FINE["network"]["unet"]["params"].update(
    f_maps=64,
    neck_dense_type="UNCHANGED",
    neck_bound=[64, 64, 64],
    unstable_cutoff=True,
    unstable_cutoff_threshold=0.3,
)

# From XCube's own classes on the meta device (xcube_keys.txt): counts, elements, a few shapes.
PUBLISHED = {
    "coarse": (
        COARSE,
        95,
        236_318_779,
        {
            "encoder.mix_fc.weight": (32, 36),
            "unet.pre_conv.weight": (32, 32),
            "unet.encoders.Enc0.SingleConv1.Conv.weight": (64, 32, 3, 3, 3),
            "unet.encoders.Enc3.SingleConv2.Conv.weight": (1024, 512, 3, 3, 3),
            "unet.pre_kl_bottleneck.pre_kl_bottleneck_1.SingleConv2.Conv.weight": (16, 16, 3, 3, 3),
            "unet.post_kl_bottleneck.post_kl_bottleneck_0.SingleConv1.GroupNorm.weight": (8,),
            "unet.post_kl_bottleneck.post_kl_bottleneck_0.SingleConv1.Conv.weight": (1024, 8, 3, 3, 3),
            "unet.decoders.Dec-4.SingleConv1.Conv.weight": (128, 256, 3, 3, 3),
            "unet.struct_convs.Struct-1.OutConv.weight": (2, 1024),
            "unet.struct_convs.Struct-4.OutConv.bias": (2,),
            "unet.normal_head.OutConv.weight": (3, 128),
        },
    ),
    "fine": (
        FINE,
        78,
        14_863_417,
        {
            "unet.encoders.Enc0.SingleConv1.Conv.weight": (32, 32, 3, 3, 3),
            "unet.post_kl_bottleneck.post_kl_bottleneck_0.SingleConv1.Conv.weight": (256, 8, 3, 3, 3),
            "unet.decoders.Dec-3.SingleConv1.Conv.weight": (64, 128, 3, 3, 3),
            "unet.struct_convs.Struct-3.OutConv.weight": (2, 64),
            "unet.normal_head.SingleConv.Conv.weight": (64, 64, 3, 3, 3),
        },
    ),
}
KEYS_FILE = Path("/tmp/xcube-research/xcube_keys.txt")


@pytest.mark.parametrize("name", ["coarse", "fine"])
def test_published_layout(name):
    config, count, elements, shapes = PUBLISHED[name]
    with torch.device("meta"):
        model = xv.XCubeVAE(config)
    state = model.state_dict()
    assert len(state) == count
    total = sum(t.numel() for t in state.values())
    assert total == elements  # published as 236.32M / 14.86M
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert model.latent_channels == 8
    assert all(k.startswith(("encoder.mix_fc.", "unet.")) for k in state)
    if KEYS_FILE.exists():  # the full list, where the research dump is at hand
        section = KEYS_FILE.read_text().split(f"## {name}_vae/")[1].split("\n## ")[0]
        published = {}
        for line in section.splitlines()[1:]:
            key, shape = line.strip().split("\t")
            published[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
        assert list(published) == list(state)
        assert published == {k: tuple(v.shape) for k, v in state.items()}


def test_vae_args_and_geometry():
    args = xv.vae_args(COARSE)
    assert args["num_blocks"] == 4 and args["with_normal_branch"] and args["encoder_in"] == 36
    with torch.device("meta"):
        coarse, fine = xv.XCubeVAE(COARSE), xv.XCubeVAE(FINE)
    assert coarse.voxel_size(0) == 0.0625 and coarse.voxel_size(3) == 0.0078125
    assert fine.voxel_size(0) == coarse.voxel_size(3)  # the fine latent grid is the coarse output grid
    ijk = coarse.latent_ijk()
    assert ijk.shape == (4096, 3) and int(ijk.min()) == -8 and int(ijk.max()) == 7


def test_conv_matches_dense_fvdb_formula():
    """fVDB's dense backend: grid as (B, C, k, j, i) through F.conv3d with the stored weight."""
    torch.manual_seed(0)
    conv = xv.FvdbSparseConv3d(3, 5, 3, bias=True)
    size = (4, 5, 6)
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n) - 2 for n in size], indexing="ij"), -1).reshape(-1, 3)
    feats = torch.randn(ijk.shape[0], 3)
    out = conv(xv.grid_from_ijk(ijk, feats)).feats
    dense = feats.reshape(*size, 3).permute(3, 2, 1, 0).unsqueeze(0)  # (1, C, k, j, i)
    ref = F.conv3d(dense, conv.weight, conv.bias, padding=1)[0].permute(3, 2, 1, 0).reshape(-1, 5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # one tap: W[..., k0=2, k1=1, k2=1] reads the +k neighbour
    single = xv.FvdbSparseConv3d(1, 1, 3, bias=False)
    with torch.no_grad():
        single.weight.zero_()
        single.weight[0, 0, 2, 1, 1] = 1.0
    coords = torch.tensor([[0, -3, 0], [0, -3, 1], [5, 5, 5]])
    got = single(xv.grid_from_ijk(coords, torch.tensor([[1.0], [2.0], [3.0]]))).feats[:, 0]
    assert got.tolist() == [2.0, 0.0, 0.0]


def _tiny_config():
    config = copy.deepcopy(FINE)
    config.update(tree_depth=3, cut_ratio=4)
    config["network"]["encoder"]["c_dim"] = 4
    config["network"]["unet"]["params"].update(in_channels=4, f_maps=8, unstable_cutoff=False)
    return config


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = xv.XCubeVAE(_tiny_config()).eval()
    assert model.latent_channels == 8  # 8 * 2**2 / 4
    return model


def _latent(seed=1, batch=0, bound=2):
    g = torch.Generator().manual_seed(seed)
    ijk = torch.stack(torch.meshgrid(*[torch.arange(-bound, bound)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return xv.grid_from_ijk(ijk, torch.randn(ijk.shape[0], 8, generator=g), batch)


def _parents(level: SparseTensor) -> set:
    c = level.coords.long()
    return {(b, i // 2, j // 2, k // 2) for b, i, j, k in c.tolist()}


def test_tiny_decode_hierarchy_and_determinism():
    model = _tiny()
    latent = _latent()
    out = model.decode(latent)
    assert len(out.levels) == 3
    previous = {tuple(r) for r in latent.coords.tolist()}
    for level in out.levels:
        rows = {tuple(r) for r in level.coords.tolist()}
        assert len(rows) == level.coords.shape[0]
        if level is not out.levels[0]:
            assert _parents(level) <= previous  # every voxel is a child of a kept parent
        assert level.feats.shape[1] == 2 and bool((level.feats[:, 0] > level.feats[:, 1]).all())
        previous = rows
    assert out.levels[0].coords.shape[0] > 0 and out.grid.coords.shape[0] > 0
    assert torch.equal(out.grid.coords, out.levels[-1].coords)
    assert out.normals.shape == (out.grid.coords.shape[0], 3) and bool(torch.isfinite(out.normals).all())
    assert out.grid.feats.shape[1] == 8
    again = model.decode(latent)
    assert torch.equal(again.grid.coords, out.grid.coords) and torch.equal(again.normals, out.normals)
    # strict round trip through a state dict
    clone = xv.XCubeVAE(_tiny_config()).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(clone.decode(latent).normals, out.normals)


def test_all_exist_and_batches_are_independent():
    model = _tiny()
    with torch.no_grad():
        for head in model.unet.struct_convs:
            head.OutConv.weight.zero_()
            head.OutConv.bias.copy_(torch.tensor([1.0, -1.0]))
    a, b = _latent(1, 0), _latent(2, 0, bound=1)
    out = model.decode(a)
    assert [lv.coords.shape[0] for lv in out.levels] == [64, 512, 4096]
    assert int(out.grid.coords[:, 1:].min()) == -8 and int(out.grid.coords[:, 1:].max()) == 7
    # a batch of two decodes as each sample alone (per-sample group norm)
    shifted = b.coords + torch.tensor([1, 0, 0, 0], dtype=b.coords.dtype)
    both = SparseTensor(torch.cat([a.feats, b.feats]), torch.cat([a.coords, shifted]))
    joint = model.decode(both)
    alone_b = model.decode(b)
    first = joint.grid.coords[:, 0] == 0
    torch.testing.assert_close(joint.normals[first], out.normals, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(joint.normals[~first], alone_b.normals, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_nothing_exists(level):
    model = _tiny()
    with torch.no_grad():
        list(model.unet.struct_convs)[level].OutConv.bias.copy_(torch.tensor([-1e4, 1e4]))
    out = model.decode(_latent())
    assert all(lv.coords.shape[0] == 0 for lv in out.levels[level:])
    assert out.grid.coords.shape == (0, 4) and out.normals.shape == (0, 3)


def test_unstable_cutoff_only_in_training_mode():
    config = _tiny_config()
    params = config["network"]["unet"]["params"]
    params.update(unstable_cutoff=True, unstable_cutoff_threshold=0.0, neck_bound=[2] * 3)
    torch.manual_seed(0)
    model = xv.XCubeVAE(config).eval()
    with torch.no_grad():
        for head in model.unet.struct_convs:
            head.OutConv.weight.zero_()
            head.OutConv.bias.copy_(torch.tensor([1.0, -1.0]))
    assert model.decode(_latent()).grid.coords.shape[0] == 4096
    cut = model.decode(_latent(), is_testing=False)
    assert [lv.coords.shape[0] for lv in cut.levels] == [64, 0, 0]
