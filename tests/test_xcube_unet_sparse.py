"""XCube's fine diffusion UNet (unet_sparse_crossattn) in plain torch: keys, shapes and behaviour."""

from __future__ import annotations

import torch

from services.recon.families.xcube.unet_sparse import (
    FvdbConv3d,
    SparseUNet,
    avg_pool2,
    sparse_unet_args,
    upsample_nearest2,
)
from services.recon.sparse import SparseTensor

# The merged objaverse fine config (train_diffusion_128x128x128_sparse_text_cond.yaml over
# diffusion_128x128x128_sparse.yaml), the parts the UNet reads.
FINE_CONFIG = {
    "conditioning_key": "c_crossattn",
    "context_dim": 1024,
    "num_classes": 3,
    "use_pos_embed": True,
    "use_pos_embed_world": False,
    "vae_config": "configs/objaverse/train_vae_128x128x128_sparse.yaml",
    "network": {
        "diffuser_name": "UNetModel_Sparse_CrossAttn",
        "diffuser": {
            "dims": 3,
            "image_size": 128,
            "model_channels": 64,
            "use_middle_attention": True,
            "channel_mult": [1, 2, 2, 4],
            "attention_resolutions": [4, 8],
            "num_res_blocks": 2,
            "num_heads": 8,
        },
    },
}
FINE_VAE = {"cut_ratio": 32, "tree_depth": 3, "network": {"unet": {"params": {"f_maps": 64}}}}

TINY = dict(
    num_input_channels=14,
    out_channels=8,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[2],
    num_heads=4,
    context_dim=16,
)


def test_args_from_the_published_config():
    args = sparse_unet_args(FINE_CONFIG)
    assert args["num_input_channels"] == 14  # 8 latent + 3 normals + 3 ijk
    assert args["out_channels"] == 8
    assert args["context_dim"] == 1024 and args["num_classes"] is None
    assert sparse_unet_args(FINE_CONFIG, FINE_VAE) == args


def test_full_size_keys_and_shapes_match_the_published_unet():
    with torch.device("meta"):
        net = SparseUNet(**sparse_unet_args(FINE_CONFIG))
    state = {f"unet.{k}": v for k, v in net.state_dict().items()}
    assert len(state) == 794
    assert sum(v.numel() for v in state.values()) == 79_587_528  # 79.59 M
    expected = {
        "unet.time_emb.0.weight": (256, 64),
        "unet.time_emb.2.weight": (256, 256),
        "unet.encoder_blocks.0.0.weight": (64, 14, 3, 3, 3),
        "unet.encoder_blocks.0.0.bias": (64,),
        "unet.encoder_blocks.1.0.emb_layers.1.weight": (128, 256),
        "unet.encoder_blocks.1.1.proj_in.weight": (64, 64),
        "unet.encoder_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (512, 64),
        "unet.encoder_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (64, 256),
        "unet.encoder_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (64, 1024),
        "unet.encoder_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": (64, 1024),
        "unet.encoder_blocks.4.0.skip_connection.weight": (128, 64),
        "unet.encoder_blocks.7.1.transformer_blocks.0.attn1.to_q.weight": (128, 128),
        "unet.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (256, 1024),
        "unet.decoder_blocks.0.0.skip_connection.weight": (256, 512),
        "unet.decoder_blocks.2.2.emb_layers.1.weight": (512, 256),
        "unet.out_block.0.weight": (64,),
        "unet.out_block.2.weight": (8, 64, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    # Self-attention only at the two coarsest levels (ds 4 and 8) and in the middle.
    assert "unet.encoder_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" not in state
    assert "unet.encoder_blocks.1.1.transformer_blocks.0.norm1.weight" not in state
    assert "unet.encoder_blocks.4.1.transformer_blocks.0.attn1.to_q.weight" not in state
    attn1 = {k.split(".transformer_blocks")[0] for k in state if ".attn1." in k}
    assert len(attn1) == 2 * 2 + 1 + 2 * 3  # 2 encoder levels x 2, the middle, 2 decoder levels x 3


def _grid(seed: int = 0) -> SparseTensor:
    """Two samples with different voxel sets inside an 8^3 box at negative and positive ijk."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(-4, 4)
    box = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    blob0 = box[(box.float() + 0.5).norm(dim=1) < 3.6]
    half = torch.tensor([2.0, 3.0, 1.5])
    blob1 = box[((box.float() - torch.tensor([1.0, 0.0, -1.0])).abs() <= half).all(1)]
    coords = torch.cat(
        [
            torch.cat([torch.zeros(len(blob0), 1, dtype=torch.long), blob0], 1),
            torch.cat([torch.ones(len(blob1), 1, dtype=torch.long), blob1], 1),
        ]
    ).to(torch.int32)
    return SparseTensor(torch.randn(len(coords), 14, generator=g), coords)


def _tiny(seed: int = 0) -> SparseUNet:
    torch.manual_seed(seed)
    return SparseUNet(**TINY).eval()


def _context(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(2, 7, 16, generator=g)
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 6 + [False]])
    return context, mask


@torch.no_grad()
def test_tiny_forward_shapes_determinism_and_independence():
    net = _tiny()
    x = _grid()
    context, mask = _context()
    t = torch.tensor([10, 700])
    out = net(x, t, context, mask)
    n0 = int((x.coords[:, 0] == 0).sum())
    n1 = len(x.coords) - n0
    assert n0 > 100 and n1 > 100 and n0 != n1
    assert out.feats.shape == (len(x.coords), 8)
    assert torch.equal(out.coords, x.coords)
    assert torch.isfinite(out.feats).all() and out.feats.abs().max() > 0
    assert torch.equal(net(x, t, context, mask).feats, out.feats)

    # Sample 1's features, context and timestep do not reach sample 0.
    feats = x.feats.clone()
    feats[n0:] = torch.randn(len(feats) - n0, 14)
    other_context = context.clone()
    other_context[1] = torch.randn(7, 16)
    changed = net(x.replace(feats), torch.tensor([10, 3]), other_context, mask)
    torch.testing.assert_close(changed.feats[:n0], out.feats[:n0], rtol=0, atol=1e-6)
    assert not torch.allclose(changed.feats[n0:], out.feats[n0:], atol=1e-3)

    # Masked-out tokens are ignored; the others are not.
    masked = context.clone()
    masked[0, 4:] = 100.0
    masked[1, 6:] = -100.0
    torch.testing.assert_close(net(x, t, masked, mask).feats, out.feats, rtol=0, atol=1e-5)
    visible = context.clone()
    visible[0, 0] += 3.0
    moved = net(x, t, visible, mask).feats
    assert not torch.allclose(moved[:n0], out.feats[:n0], atol=1e-3)
    torch.testing.assert_close(moved[n0:], out.feats[n0:], rtol=0, atol=1e-6)


@torch.no_grad()
def test_tiny_forward_is_equivariant_to_row_order_and_even_shifts():
    net = _tiny()
    x = _grid()
    context, mask = _context()
    t = torch.tensor([500])  # one timestep for the whole batch
    out = net(x, t, context, mask).feats
    n0 = int((x.coords[:, 0] == 0).sum())
    order = torch.cat([torch.randperm(n0), n0 + torch.randperm(len(x.coords) - n0)])
    permuted = net(SparseTensor(x.feats[order], x.coords[order]), t, context, mask).feats
    torch.testing.assert_close(permuted, out[order], rtol=1e-4, atol=1e-5)
    shifted = x.coords.clone()
    shifted[:, 1:] += torch.tensor([16, -32, 6], dtype=torch.int32)  # multiples of the pooling stride 2
    torch.testing.assert_close(net(SparseTensor(x.feats, shifted), t, context, mask).feats, out)


def test_convolutions_are_the_vaes():
    """One fVDB convolution (and kernel-axis convention) for both sparse networks; its layout is
    pinned by tests/test_xcube_vae.py against fVDB's dense formula."""
    from services.recon.families.xcube.vae import FvdbSparseConv3d

    assert FvdbConv3d is FvdbSparseConv3d
    skip = FvdbConv3d(3, 5, 1)
    assert skip.weight.shape == (5, 3)


def test_avg_pool_divides_by_eight_and_upsampling_copies_parents():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0], [1, -1, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[8.0], [16.0], [4.0], [2.0]]), coords)
    pooled = avg_pool2(x)
    assert pooled.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, -1, 0, 0]]
    assert pooled.feats.flatten().tolist() == [3.0, 0.5, 0.25]
    back = upsample_nearest2(pooled, x)
    assert torch.equal(back.coords, coords)
    assert back.feats.flatten().tolist() == [3.0, 3.0, 0.5, 0.25]
