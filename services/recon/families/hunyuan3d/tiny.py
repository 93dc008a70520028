"""A tiny random-weight Hunyuan3D-2 repository in the layout of tencent/Hunyuan3D-2.

Shape: `hunyuan3d-dit-v2-0/` and `hunyuan3d-dit-v2-0-turbo/`, each a `config.yaml` whose sections
name hy3dgen classes (model, vae, conditioner, scheduler, image_processor) and one
`model.fp16.safetensors` with `model.*`, `vae.*` and `conditioner.*` keys, as published.
Texture: `hunyuan3d-delight-v2-0/` (a diffusers InstructPix2Pix folder) and
`hunyuan3d-paint-v2-0/` (a diffusers folder whose `unet/` holds hy3dgen's `modules.py`, a UNet
`config.json` and `diffusion_pytorch_model.bin`, read by UNet2p5DConditionModel.from_pretrained).
Widths are toy-sized; the sizes the code hard-codes (1024-wide text tokens, a 1280-wide time
embedding, 12 input channels) are kept, so the upstream classes load these files unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from services.recon.families.hunyuan3d.compat import ensure_importable

SHAPE_SUBFOLDERS = ("hunyuan3d-dit-v2-0", "hunyuan3d-dit-v2-0-turbo")


def shape_config(turbo: bool) -> dict:
    dino = {
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": 32,
        "image_size": 28,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "mlp_ratio": 2,
        "model_type": "dinov2",
        "num_attention_heads": 2,
        "num_channels": 3,
        "num_hidden_layers": 1,
        "patch_size": 14,
        "qkv_bias": True,
        "use_swiglu_ffn": True,
    }
    scheduler = (
        {
            "target": "hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000, "pcm_timesteps": 100},
        }
        if turbo
        else {
            "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        }
    )
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {
                "in_channels": 8,
                "context_in_dim": 32,
                "hidden_size": 32,
                "mlp_ratio": 2.0,
                "num_heads": 2,
                "depth": 1,
                "depth_single_blocks": 1,
                "axes_dim": [16],
                "theta": 10000,
                "qkv_bias": True,
                "guidance_embed": turbo,
            },
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {
                "num_latents": 32,
                "embed_dim": 8,
                "num_freqs": 8,
                "include_pi": False,
                "heads": 2,
                "width": 32,
                "num_decoder_layers": 1,
                "qkv_bias": False,
                "qk_norm": True,
                "scale_factor": 1.0,
            },
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {
                "main_image_encoder": {
                    "type": "DinoImageEncoder",
                    "kwargs": {"config": dino, "image_size": 28},
                }
            },
        },
        "scheduler": scheduler,
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": 64, "border_ratio": 0.15},
        },
        "pipeline": {"target": "hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline"},
    }


def write_shape(folder: Path, turbo: bool, seed: int) -> None:
    ensure_importable()
    from hy3dgen.shapegen.pipelines import instantiate_from_config
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    config = shape_config(turbo)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tensors = {}
    for part in ("model", "vae", "conditioner"):
        module = instantiate_from_config(config[part])
        for key, value in module.state_dict().items():
            tensors[f"{part}.{key}"] = value.detach().to(torch.float16).contiguous()
    save_file(tensors, str(folder / "model.fp16.safetensors"))


def _tiny_unet(in_channels: int, cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
        **extra,
    )


def _text_parts(folder: Path, hidden: int) -> None:
    from transformers import CLIPTextModel

    from services.imagegen.tiny import _text_config, write_clip_tokenizer

    vocab = write_clip_tokenizer(folder / "tokenizer", pad_token="!")
    CLIPTextModel(_text_config(vocab, hidden, "gelu", hidden)).save_pretrained(folder / "text_encoder")


def _scheduler(folder: Path, class_name: str) -> None:
    from services.imagegen.tiny import _scheduler_config

    config = {"_class_name": class_name, **_scheduler_config(ancestral=True)}
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))


def write_delight(folder: Path, seed: int) -> None:
    """An InstructPix2Pix pipeline: 8 UNet input channels (noise + image latents)."""
    from services.imagegen.tiny import _tiny_vae

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    _text_parts(folder, hidden=32)
    _tiny_unet(8, 32).save_pretrained(folder / "unet")
    _tiny_vae(0.18215).save_pretrained(folder / "vae")
    _scheduler(folder, "EulerAncestralDiscreteScheduler")
    index = {
        "_class_name": "StableDiffusionInstructPix2PixPipeline",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def write_paint(folder: Path, seed: int) -> None:
    """The multiview painter: hy3dgen's UNet2p5DConditionModel around a diffusers UNet."""
    ensure_importable()
    import hy3dgen.texgen.hunyuanpaint.unet.modules as modules
    from transformers import CLIPImageProcessor

    from services.imagegen.tiny import _tiny_vae

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    _text_parts(folder, hidden=32)
    _tiny_vae(0.18215).save_pretrained(folder / "vae")
    _scheduler(folder, "DDIMScheduler")
    CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(
        folder / "feature_extractor"
    )
    # The wrapper hard-codes 1024-wide text tokens and a 1280-wide time/camera embedding.
    unet = _tiny_unet(4, 1024, time_embedding_dim=1280)
    unet_dir = folder / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    unet_dir.joinpath("config.json").write_text(json.dumps(dict(unet.config), indent=2, default=list))
    wrapped = modules.UNet2p5DConditionModel(unet)
    torch.save(wrapped.state_dict(), unet_dir / "diffusion_pytorch_model.bin")
    shutil.copyfile(modules.__file__, unet_dir / "modules.py")  # the published folder ships it too
    index = {
        "_class_name": "HunyuanPaintPipeline",
        "_diffusers_version": "0.29.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["modules", "UNet2p5DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def write_tiny_hunyuan3d(folder: Path, seed: int = 0) -> Path:
    for number, sub in enumerate(SHAPE_SUBFOLDERS):
        write_shape(folder / sub, turbo=sub.endswith("turbo"), seed=seed + number)
    write_delight(folder / "hunyuan3d-delight-v2-0", seed + 10)
    write_paint(folder / "hunyuan3d-paint-v2-0", seed + 20)
    return folder
