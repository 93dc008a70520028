"""XCube coarse dense UNet: published parameter layout, config mapping, forward behaviour."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from services.recon.families.xcube.unet_dense import DenseUNet, dense_unet_args, vae_latent_channels

# Merged `configs/objaverse/train_diffusion_16x16x16_dense_text_cond.yaml` (network + conditioning part).
COARSE_CONFIG = {
    "model": "diffusion",
    "conditioning_key": "crossattn",
    "context_dim": 1024,
    "use_text_cond": True,
    "network": {
        "diffuser_name": "UNetModel_Dense",
        "diffuser": {
            "dims": 3,
            "image_size": 16,
            "model_channels": 256,
            "attention_resolutions": [1, 2, 4, 8],
            "num_res_blocks": 2,
            "channel_mult": [1, 2, 4, 4],
            "num_heads": 8,
            "use_scale_shift_norm": True,
            "resblock_updown": True,
        },
    },
}

# A sample of the published `unet.*` shapes (prefix stripped).
PUBLISHED_SHAPES = {
    "time_embed.0.weight": (1024, 256),
    "time_embed.2.weight": (1024, 1024),
    "input_blocks.0.0.weight": (256, 8, 3, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (512, 1024),
    "input_blocks.1.1.proj_in.weight": (256, 256, 1, 1, 1),
    "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2048, 256),
    "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (256, 1024),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (256, 1024),
    "input_blocks.4.0.skip_connection.weight": (512, 256, 1, 1, 1),
    "middle_block.0.emb_layers.1.weight": (2048, 1024),
    "middle_block.1.norm.weight": (1024,),
    "middle_block.1.transformer_blocks.0.attn1.to_q.weight": (1024, 1024),
    "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": (8192, 1024),
    "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1024, 1024),
    "middle_block.1.transformer_blocks.0.attn2.to_out.0.bias": (1024,),
    "output_blocks.0.0.in_layers.0.weight": (2048,),
    "output_blocks.0.0.skip_connection.weight": (1024, 2048, 1, 1, 1),
    "output_blocks.2.2.emb_layers.1.weight": (2048, 1024),
    "out.0.weight": (256,),
}


def _tiny(**over) -> DenseUNet:
    kw = dict(
        image_size=8,
        num_input_channels=8,
        out_channels=8,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=[1, 2],
        channel_mult=[1, 2],
        dims=3,
        num_heads=4,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_spatial_transformer=True,
        context_dim=48,
    )
    kw.update(over)
    torch.manual_seed(0)
    model = DenseUNet(**kw).eval()
    # Zero-initialised output convs would make every output 0; randomise everything.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def _inputs(context_dim: int = 48):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 8, 8, 8, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 77, context_dim, generator=g)
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[:, :6] = True
    return x, t, ctx, mask


def test_full_coarse_layout_matches_published():
    with torch.device("meta"):
        model = DenseUNet(**dense_unet_args(COARSE_CONFIG))
    sd = model.state_dict()
    assert len(sd) == 864
    assert sum(v.numel() for v in sd.values()) == 1_492_677_896  # 1492.68 M
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    # `unet.`-prefixed checkpoint keys load strictly once the prefix is stripped.
    ckpt = {"unet." + k: torch.empty_like(v, device="meta") for k, v in sd.items()}
    stripped = {k.removeprefix("unet."): v for k, v in ckpt.items()}
    model.load_state_dict(stripped, strict=True, assign=True)
    mid = model.middle_block[1]
    assert mid.in_channels == 1024
    assert mid.transformer_blocks[0].attn2.heads == 8


def test_dense_unet_args_mapping():
    args = dense_unet_args(OmegaConf.create(COARSE_CONFIG))
    assert args["num_input_channels"] == 8 and args["out_channels"] == 8
    assert args["use_spatial_transformer"] is True and args["context_dim"] == 1024
    assert args["num_classes"] is None and args["channel_mult"] == [1, 2, 4, 4]

    vae = {
        "cut_ratio": 128,
        "tree_depth": 4,
        "network": {"unet": {"params": {"f_maps": 128, "num_blocks": 4}}},
    }
    assert vae_latent_channels(vae) == 8
    c = dict(COARSE_CONFIG, conditioning_key="c_crossattn", num_classes=3, use_pos_embed=True)
    args = dense_unet_args(c, vae_config=vae)
    assert args["num_input_channels"] == 14 and args["out_channels"] == 8
    args = dense_unet_args(dict(COARSE_CONFIG, conditioning_key="adm", num_classes=5), latent_channels=4)
    assert args["num_classes"] == 5 and args["context_dim"] is None and args["num_input_channels"] == 4
    args = dense_unet_args(dict(COARSE_CONFIG, use_pos_embed_high=True, use_pos_embed_world=True))
    assert args["num_input_channels"] == 8 + 33  # upstream's if/elif precedence
    with pytest.raises(ValueError):
        dense_unet_args(dict(COARSE_CONFIG, conditioning_key="bogus"))
    with pytest.raises(ValueError):
        dense_unet_args({"network": {"diffuser_name": "UNetModel_Sparse_CrossAttn", "diffuser": {}}})


def test_unsupported_arguments_raise_and_irrelevant_are_ignored():
    base = dict(num_input_channels=8, model_channels=32, num_res_blocks=1, attention_resolutions=[2])
    base.update(channel_mult=[1, 2], num_heads=4, use_spatial_transformer=True, context_dim=48)
    with pytest.raises(ValueError):
        DenseUNet(**dict(base, dims=2))
    with pytest.raises(ValueError):
        DenseUNet(**dict(base, dims=3, use_fp16=True))
    with pytest.raises(ValueError):
        DenseUNet(**dict(base, dims=3, use_spatial_transformer=False))
    with pytest.raises(ValueError):
        DenseUNet(**dict(base, dims=3, num_heads=-1))
    model = DenseUNet(**dict(base, dims=3, use_middle_attention=True, use_checkpoint=True))
    assert model.ignored_kwargs == {"use_middle_attention": True}


def test_tiny_forward_shape_finite_deterministic():
    model = _tiny()
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        a = model(x, t, ctx, mask)
        b = model(x, t, ctx, mask)
        scalar_t = model(x, torch.tensor(500.0), ctx, mask)
        other_t = model(x, torch.tensor([20.0]), ctx, mask)
    assert a.shape == (1, 8, 8, 8, 8)
    assert torch.isfinite(a).all() and a.abs().max() > 0
    assert torch.equal(a, b)
    assert torch.allclose(a, scalar_t)
    assert not torch.allclose(a, other_t)


def test_context_mask_hides_masked_tokens():
    model = _tiny()
    x, t, ctx, mask = _inputs()
    altered = ctx.clone()
    altered[:, 6:] = torch.randn_like(altered[:, 6:]) * 10
    with torch.no_grad():
        ref = model(x, t, ctx, mask)
        same = model(x, t, altered, mask)
        unmasked = model(x, t, altered, None)
        attended = ctx.clone()
        attended[:, 2] += 1.0
        changed = model(x, t, attended, mask)
    assert torch.allclose(ref, same, atol=1e-6)
    assert not torch.allclose(ref, unmasked, atol=1e-4)
    assert not torch.allclose(ref, changed, atol=1e-6)


def test_bfloat16_forward_close_to_fp32():
    model = _tiny(attention_resolutions=[2])
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        ref = model(x, t, ctx, mask)
        out = model.to(torch.bfloat16)(x, t, ctx, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
