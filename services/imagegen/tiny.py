"""Tiny random-weight SD-Turbo, SDXL-Turbo and CLIP checkpoints in the Hub's on-disk layouts.

Same classes, same folder structure, same config keys and tokenizer files as
stabilityai/sd-turbo, stabilityai/sdxl-turbo and openai/clip-vit-base-patch32, at toy widths,
so the real loaders (`from_pretrained` on a folder or HF-cache snapshot) are what tests run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_MAX_LENGTH = 77


def _bytes_to_unicode() -> list[str]:
    """The byte-level alphabet of GPT-2/CLIP BPE, in CLIP's vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_clip_tokenizer(folder: Path, pad_token: str) -> int:
    """vocab.json + merges.txt + special_tokens_map.json + tokenizer_config.json; returns vocab size.

    Every byte has a token (and an end-of-word token), so any text tokenizes; the end token
    has the highest id, as CLIPTextModel's pooling expects.
    """
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": TEXT_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(tokens)


def _text_config(vocab: int, hidden: int, act: str, projection: int) -> object:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_MAX_LENGTH,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _tiny_vae(scaling_factor: float) -> object:
    from diffusers import AutoencoderKL

    # Four blocks keep the real 8x latent scale factor.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


def _scheduler_config(ancestral: bool) -> dict:
    return {
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "trailing",
        "trained_betas": None,
        **({} if ancestral else {"use_karras_sigmas": False, "timestep_type": "discrete"}),
    }


def _replace_tokenizer(folder: Path, pad_token: str) -> None:
    """save_pretrained writes the transformers-5 tokenizer layout; write the Hub's instead."""
    for stale in folder.glob("*"):
        stale.unlink()
    write_clip_tokenizer(folder, pad_token)


def write_tiny_sd_turbo(folder: Path, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = folder / "tokenizer"
    vocab = write_clip_tokenizer(tok_dir, pad_token="!")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(0.18215),
        text_encoder=CLIPTextModel(_text_config(vocab, 32, "gelu", 32)),
        tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(_scheduler_config(ancestral=False)),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    _replace_tokenizer(tok_dir, "!")
    return folder


def write_tiny_sdxl_turbo(folder: Path, seed: int = 0) -> Path:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=16 + 32,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim,
        norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(0.13025),
        text_encoder=CLIPTextModel(_text_config(vocab, 16, "quick_gelu", 16)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab, 32, "gelu", 32)),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")),
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(_scheduler_config(ancestral=True)),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(folder))
    _replace_tokenizer(folder / "tokenizer", "<|endoftext|>")
    _replace_tokenizer(folder / "tokenizer_2", "!")
    return folder


CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_clip_tokenizer(folder, pad_token="<|endoftext|>")
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": TEXT_MAX_LENGTH,
            "hidden_act": "quick_gelu",
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=16,
        logit_scale_init_value=2.6592,
    )
    CLIPModel(config).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=2))
    return folder


def write_tiny_rembg(folder: Path) -> Path:
    """A u2net-format ONNX segmenter (input 1x3x320x320 -> mask 1x1x320x320) at toy size.

    Its one 1x1 convolution computes brightness, so on a bright object over a dark background
    the mask is the object: enough for tests to check cut-out, centring and padding.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    luma = np.array([0.299, 0.587, 0.114])
    gain = 12.0
    # rembg feeds (v - mean) / std; undo that inside the convolution, then centre on 0.5.
    weight = (gain * luma * std).reshape(1, 3, 1, 1).astype(np.float32)
    bias = np.array([gain * (float(luma @ mean) - 0.5)], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "w", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["d1"]),
        ],
        "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("d1", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "u2net-tiny.onnx"
    onnx.save(model, str(path))
    return folder


def write_tiny_lora(
    pipeline_folder: Path, target: Path, rank: int = 2, seed: int = 0, strength: float = 0.5
) -> Path:
    """A LoRA for the UNet of a (tiny) pipeline folder, in the diffusers/peft key format."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(pipeline_folder / "unet"))
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and (
            name.split(".")[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")
        ):
            down = torch.randn(rank, module.in_features, generator=generator) * strength
            up = torch.randn(module.out_features, rank, generator=generator) * strength
            tensors[f"unet.{name}.lora_A.weight"] = down.contiguous()
            tensors[f"unet.{name}.lora_B.weight"] = up.contiguous()
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return target
