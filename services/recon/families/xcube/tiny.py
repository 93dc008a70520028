"""Tiny random-weight XCube checkpoints in XCube's repository layout, for tests.

Writes `configs/objaverse/*.yaml` (each including a base file, as XCube's configs do),
`checkpoints/objaverse/{coarse,fine}_diffusion/last.ckpt` (Lightning-style: `state_dict` with
`vae.*`, `unet.*`, `unet_ema.*` and `scale_factor`, plus plain bookkeeping entries),
`assets/null_text_emb.pkl`, and a tiny SD-style text tower (`text/text_encoder/`) with its
tokenizer (`tokenizer/`). Tiny choices: a 4^3 coarse latent (published 16^3) over a 3-level
coarse VAE (published 4) whose finest grid is 16^3, a 2-level fine VAE, a 64-wide text context
(published 1024).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

CONTEXT = 64
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
    "clip_sample": False,
    "prediction_type": "v_prediction",
}


def _vae(levels: int, f_maps: int, voxel: float, neck: str, full: bool) -> dict:
    params = {
        "in_channels": 32 if full else 16,
        "num_blocks": levels,
        "f_maps": f_maps,
        "neck_dense_type": neck,
        "neck_bound": [8, 8, 8] if full else [2, 2, 2],
        "num_res_blocks": 1,
        "use_residual": False,
        "order": "gcr",
        "is_add_dec": False,
        "use_attention": False,
        "use_checkpoint": False,
    }
    return {
        "voxel_size": voxel,
        "tree_depth": levels,
        "cut_ratio": f_maps * 2 ** (levels - 1) // 8,
        "use_input_normal": True,
        "supervision": {"normal_weight": 300.0},
        "network": {
            "encoder": {"c_dim": 32 if full else 16},
            "unet": {"target": "StructPredictionNet", "params": params},
        },
    }


def _diffusion(name: str, vae: str, diffuser: dict, context: int, **extra) -> dict:
    return {
        "vae_config": vae,
        "context_dim": context,
        "use_text_cond": True,
        "scale_by_std": True,
        "num_inference_steps": 100,
        "network": {"diffuser_name": name, "diffuser": diffuser, "scheduler": SCHEDULER},
        **extra,
    }


def configs(full: bool = False) -> dict[str, dict]:
    """Relative path -> yaml content: per stage a base (`train/...`) and the objaverse file on top.
    `full`: the published objaverse values (the family README lists them), else tiny ones."""
    if full:
        dense = {"dims": 3, "image_size": 16, "model_channels": 256, "attention_resolutions": [1, 2, 4, 8],
                 "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
                 "use_scale_shift_norm": True, "resblock_updown": True}  # fmt: skip
        sparse = {"dims": 3, "image_size": 128, "model_channels": 64, "use_middle_attention": True,
                  "channel_mult": [1, 2, 2, 4], "attention_resolutions": [4, 8], "num_res_blocks": 2,
                  "num_heads": 8}  # fmt: skip
        coarse_vae, fine_vae, context = _vae(4, 128, 0.0078125, "HAND_CRAFTED", True), None, 1024
        fine_vae = _vae(3, 64, 0.001953125, "UNCHANGED", True)
    else:
        dense = {"dims": 3, "image_size": 4, "model_channels": 32, "attention_resolutions": [1, 2],
                 "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": 2, "use_scale_shift_norm": True,
                 "resblock_updown": True}  # fmt: skip
        sparse = {"dims": 3, "image_size": 16, "model_channels": 32, "channel_mult": [1, 2],
                  "attention_resolutions": [2], "num_res_blocks": 1, "num_heads": 2}  # fmt: skip
        coarse_vae, fine_vae, context = _vae(3, 8, 1 / 16, "HAND_CRAFTED", False), None, CONTEXT
        fine_vae = _vae(2, 8, 1 / 64, "UNCHANGED", False)
    coarse = _diffusion("UNetModel_Dense", "", dense, context, conditioning_key="crossattn")
    fine = _diffusion("UNetModel_Sparse_CrossAttn", "", sparse, context, conditioning_key="c_crossattn",
                      num_classes=3, use_normal_concat_cond=True, use_pos_embed=True)  # fmt: skip
    return {
        "train/vae/coarse.yaml": coarse_vae,
        "train/vae/fine.yaml": fine_vae,
        "objaverse/train_vae_16x16x16_dense.yaml": {"include_configs": ["../train/vae/coarse.yaml"]},
        "objaverse/train_vae_128x128x128_sparse.yaml": {"include_configs": ["../train/vae/fine.yaml"]},
        "train/diffusion/coarse.yaml": coarse,
        "train/diffusion/fine.yaml": fine,
        "objaverse/train_diffusion_16x16x16_dense_text_cond.yaml": {
            "include_configs": ["../train/diffusion/coarse.yaml"],
            "vae_config": "configs/objaverse/train_vae_16x16x16_dense.yaml",
        },
        "objaverse/train_diffusion_128x128x128_sparse_text_cond.yaml": {
            "include_configs": ["../train/diffusion/fine.yaml"],
            "vae_config": "configs/objaverse/train_vae_128x128x128_sparse.yaml",
        },
    }


def _randomize(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> None:
    for name, param in module.named_parameters():
        owners = name.split(".")[:-1]
        if any("norm" in owner.lower() for owner in owners[-1:]):
            continue
        param.data = torch.randn(param.shape, generator=generator) * scale


def write_text_tower(root: Path, full: bool = False) -> tuple[Path, Path]:
    from transformers import CLIPTextModel

    from services.imagegen.tiny import _text_config, write_clip_tokenizer

    tokenizer = root / "tokenizer"
    vocab = write_clip_tokenizer(tokenizer, pad_token="<|endoftext|>")
    config = _text_config(vocab, CONTEXT, "gelu", CONTEXT)
    if full:  # the SD-2.1 text tower's shape (OpenCLIP ViT-H text)
        config.hidden_size, config.intermediate_size = 1024, 4096
        config.num_hidden_layers, config.num_attention_heads, config.projection_dim = 23, 16, 1024
    with torch.random.fork_rng(devices=[]):  # the same tower for the same seed
        torch.manual_seed(0)
        model = CLIPTextModel(config)
    model.save_pretrained(root / "text" / "text_encoder")
    return root / "text", tokenizer


def write_layout(
    root: Path, full: bool, init, dtype=torch.float32, device: str = "cpu", seed: int = 0
) -> Path:
    """XCube's repository layout with weights set by `init(module)`, saved in `dtype`."""
    from services.recon.families.xcube import loader
    from services.recon.families.xcube.unet_dense import DenseUNet, dense_unet_args
    from services.recon.families.xcube.unet_sparse import SparseUNet, sparse_unet_args
    from services.recon.families.xcube.vae import XCubeVAE

    for relative, content in configs(full).items():
        path = root / "configs" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    for stage, (config_path, ckpt_path) in loader.REPO_LAYOUT.items():
        config = loader.parse_config(root / config_path)
        vae_config = loader.parse_config(root / config["vae_config"])
        with torch.device(device):
            if stage == "coarse":
                unet = DenseUNet(**dense_unet_args(config, vae_config=vae_config))
            else:
                unet = SparseUNet(**sparse_unet_args(config, vae_config=vae_config))
            vae = XCubeVAE(vae_config)
        init(unet)
        init(vae)
        if stage == "coarse" and not full:  # structure heads lean to "exists": a non-empty tiny hierarchy
            for name, param in vae.named_parameters():
                if name.endswith("OutConv.bias") and param.shape[0] == 2:
                    param.data = torch.tensor([1.0, -1.0])
        state = {f"vae.{k}": v.to(dtype).cpu() for k, v in vae.state_dict().items()}
        state.update({f"unet.{k}": v.to(dtype).cpu() for k, v in unet.state_dict().items()})
        for name, param in unet.named_parameters():  # the EMA copy: a little off the raw weights
            state["unet_ema." + name.replace(".", "")] = (param.detach() * 0.98).to(dtype).cpu()
        state["unet_ema.decay"] = torch.tensor(0.9999)
        state["unet_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
        state["scale_factor"] = torch.tensor(1.25)
        checkpoint = root / ckpt_path
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        lightning = {"epoch": 10, "global_step": 1000, "pytorch-lightning_version": "1.9.4"}
        torch.save({**lightning, "state_dict": state}, checkpoint)
        del unet, vae, state
    (root / "assets").mkdir(parents=True, exist_ok=True)
    width = 1024 if full else CONTEXT
    null = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))
    torch.save({"text_embed_sd_model.last_hidden_state": null, "text_embed_sd_model.pooler_output": null[1]},
               root / loader.NULL_EMBEDDING)  # fmt: skip
    write_text_tower(root, full)
    return root


def write_tiny_xcube(root: Path, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    return write_layout(root, False, lambda module: _randomize(module, generator), seed=seed)
