"""A tiny random-weight TripoSR in the published layout, for tests and the local demo.

The architecture is the real one at toy widths (2x2 triplane tokens keep the random field
smooth, so the surface is a few blobs rather than noise). Random weights give a density field with
no surface at TripoSR's threshold, so the final decoder bias is set once, at write time, so
that a fixed share of the volume lies inside: the mesh is a random but real surface that
every later stage can work on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from services.recon.families.triposr.config import (
    BackboneConfig,
    DecoderConfig,
    ImageTokenizerConfig,
    PostProcessorConfig,
    TokenizerConfig,
    TripoSRConfig,
)
from services.recon.families.triposr.loader import save
from services.recon.families.triposr.model import TripoSR

TINY_DINO = {
    "architectures": ["ViTModel"],
    "model_type": "vit",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "image_size": 32,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
}


def tiny_config() -> TripoSRConfig:
    return TripoSRConfig(
        cond_image_size=64,
        image_tokenizer=ImageTokenizerConfig(pretrained_model_name_or_path="dino"),
        tokenizer=TokenizerConfig(plane_size=2, num_channels=32),
        backbone=BackboneConfig(
            in_channels=32, num_attention_heads=2, attention_head_dim=16, num_layers=2, cross_attention_dim=32
        ),
        post_processor=PostProcessorConfig(in_channels=32, out_channels=8),
        decoder=DecoderConfig(in_channels=24, n_neurons=16, n_hidden_layers=3),
    )


def write_tiny_triposr(folder: Path, seed: int = 0, inside_share: float = 0.15) -> Path:
    from transformers import ViTConfig

    torch.manual_seed(seed)
    config = tiny_config()
    model = TripoSR(config, ViTConfig(**TINY_DINO)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        # Calibrate against a neutral grey input so a surface exists at threshold 25.
        codes = model.scene_codes(torch.full((1, 3, 64, 64), 0.5))
        axis = torch.linspace(-0.87, 0.87, 24)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        raw = model.query_raw(codes[0], grid)[:, 0]
        target = torch.log(torch.tensor(25.0)) - config.renderer.density_bias
        shift = target - torch.quantile(raw, 1.0 - inside_share)
        model.decoder.layers[-1].bias[0] += shift
    save(model, folder, dino_config=TINY_DINO)
    return folder
