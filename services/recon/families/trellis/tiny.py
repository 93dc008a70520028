"""Tiny random-weight TRELLIS repositories in the published layout, for tests.

`image/`: pipeline.json (TrellisImageTo3DPipeline) + ckpts/<stem>.json|.safetensors for the five
models threegen runs, plus `dinov2/dinov2_vitl14_reg4_pretrain.pth` (a tiny ViT with the hub's
parameter names). `text/`: pipeline.json (TrellisTextTo3DPipeline) with its own flows, naming
`clip/` (a tiny CLIPTextModel + tokenizer) as text_cond_model, and the image repository's
decoders by path. Constraints kept: the sparse-structure decoder's output resolution equals the
SLat models' resolution; the mesh decoder's width is a multiple of 256 (group norms of 32).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from services.recon import dinov2
from services.recon.families.trellis.networks import CLASSES
from services.recon.families.trellis.published import GAUSSIAN_REPRESENTATION, sampler

COND = 64
TINY = {
    "sparse_structure_flow_model": ("ss_flow", "SparseStructureFlowModel", dict(
        resolution=4, in_channels=8, out_channels=8, model_channels=64, cond_channels=COND, num_blocks=2,
        num_heads=4, mlp_ratio=2, patch_size=1, pe_mode="ape", qk_rms_norm=True, use_fp16=False)),
    "sparse_structure_decoder": ("ss_dec", "SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 16],
        use_fp16=False)),
    "slat_flow_model": ("slat_flow", "SLatFlowModel", dict(
        resolution=16, in_channels=8, out_channels=8, model_channels=64, cond_channels=COND, num_blocks=2,
        num_heads=4, mlp_ratio=2, patch_size=2, num_io_res_blocks=2, io_block_channels=[32], pe_mode="ape",
        qk_rms_norm=True, use_fp16=False)),
    "slat_decoder_gs": ("slat_dec_gs", "SLatGaussianDecoder", dict(
        resolution=16, model_channels=64, latent_channels=8, num_blocks=2, num_heads=4, mlp_ratio=2,
        attn_mode="swin", window_size=8, use_fp16=False,
        representation_config=dict(GAUSSIAN_REPRESENTATION, num_gaussians=4))),
    "slat_decoder_mesh": ("slat_dec_mesh", "SLatMeshDecoder", dict(
        resolution=16, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4, mlp_ratio=2,
        attn_mode="swin", window_size=8, use_fp16=False, representation_config={"use_color": True})),
}  # fmt: skip


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Small random values everywhere (upstream's init zeroes output layers, which would make
    the flows predict nothing); norms keep their unit gains."""
    for name, param in module.named_parameters():
        if name.endswith("gamma") or "norm" in name.split(".")[-2:][0]:
            continue
        param.data = torch.randn(param.shape, generator=generator) * 0.05


def write_model(folder: Path, stem: str, cls: str, args: dict, generator: torch.Generator) -> None:
    model = CLASSES[cls](**args)
    _randomize(model, generator)
    (folder / f"{stem}.json").write_text(json.dumps({"name": cls, "args": args}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{stem}.safetensors"))


def write_dinov2(path: Path, generator: torch.Generator) -> None:
    config = dinov2.ViTConfig(
        embed_dim=COND, depth=2, num_heads=1, patch_size=14, image_size=56, num_register_tokens=4
    )
    model = dinov2.DinoVisionTransformer(config)
    for param in model.parameters():
        param.data = torch.randn(param.shape, generator=generator) * 0.05
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def write_clip(folder: Path) -> None:
    from transformers import CLIPTextModel

    from services.imagegen.tiny import _text_config, write_clip_tokenizer

    vocab = write_clip_tokenizer(folder, pad_token="<|endoftext|>")
    CLIPTextModel(_text_config(vocab, COND, "quick_gelu", COND)).save_pretrained(folder)


def write_tiny_trellis(root: Path, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    image, text = root / "image", root / "text"
    for folder in (image / "ckpts", text / "ckpts"):
        folder.mkdir(parents=True, exist_ok=True)
    for stem, cls, args in TINY.values():
        write_model(image / "ckpts", stem, cls, args, generator)
    for key in ("sparse_structure_flow_model", "slat_flow_model"):  # text flows: own weights
        stem, cls, args = TINY[key]
        write_model(text / "ckpts", f"{stem}_txt", cls, args, generator)
    write_dinov2(root / "dinov2" / dinov2.CHECKPOINT, generator)
    write_clip(root / "clip")
    common = {"sparse_structure_sampler": sampler(2, 5.0), "slat_sampler": sampler(2, 3.0),
              "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8}}  # fmt: skip
    image_models = {key: f"ckpts/{stem}" for key, (stem, _, _) in TINY.items()}
    (image / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {
        "models": image_models, **common, "image_cond_model": "dinov2_vitl14_reg"}}, indent=2))  # fmt: skip
    text_models = {key: f"../image/{path}" for key, path in image_models.items()}
    text_models["sparse_structure_flow_model"] = "ckpts/ss_flow_txt"
    text_models["slat_flow_model"] = "ckpts/slat_flow_txt"
    (text / "pipeline.json").write_text(json.dumps({"name": "TrellisTextTo3DPipeline", "args": {
        "models": text_models, **common, "text_cond_model": "../clip"}}, indent=2))  # fmt: skip
    return root
