"""The published TRELLIS models: `ckpts/<stem>.json` contents and `pipeline.json` arguments.

Values of microsoft/TRELLIS-image-large and the text repositories (their JSON args equal the
repository's training configs without the `Elastic` class prefix). Used to build full-size
models without the published files: the GPU benchmark (random weights in the real layout) and
the size checks on the meta device.
"""

from __future__ import annotations

SLAT_NORMALIZATION = {
    "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
    "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338],
}  # fmt: skip

GAUSSIAN_REPRESENTATION = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
    "perturb_offset": True,
    "voxel_size": 1.5,
    "num_gaussians": 32,
    "2d_filter_kernel_size": 0.1,
    "3d_filter_kernel_size": 9e-4,
    "scaling_bias": 4e-3,
    "opacity_bias": 0.1,
    "scaling_activation": "softplus",
}

DECODER_TRUNK = dict(resolution=64, model_channels=768, latent_channels=8, num_blocks=12, num_heads=12,
                     mlp_ratio=4, attn_mode="swin", window_size=8, use_fp16=True)  # fmt: skip

IMAGE_LARGE_MODELS = {
    "sparse_structure_decoder": ("ss_dec_conv3d_16l8_fp16", "SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2,
        channels=[512, 128, 32], use_fp16=True)),
    "sparse_structure_flow_model": ("ss_flow_img_dit_L_16l8_fp16", "SparseStructureFlowModel", dict(
        resolution=16, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024,
        num_blocks=24, num_heads=16, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True,
        use_fp16=True)),
    "slat_flow_model": ("slat_flow_img_dit_L_64l8p2_fp16", "SLatFlowModel", dict(
        resolution=64, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024, num_blocks=24,
        num_heads=16, mlp_ratio=4, patch_size=2, num_io_res_blocks=2, io_block_channels=[128], pe_mode="ape",
        qk_rms_norm=True, use_fp16=True)),
    "slat_decoder_gs": ("slat_dec_gs_swin8_B_64l8gs32_fp16", "SLatGaussianDecoder", dict(
        DECODER_TRUNK, representation_config=GAUSSIAN_REPRESENTATION)),
    "slat_decoder_mesh": ("slat_dec_mesh_swin8_B_64l8m256c_fp16", "SLatMeshDecoder", dict(
        DECODER_TRUNK, representation_config={"use_color": True})),
}  # fmt: skip

# Text models: their own flows; decoders come from TRELLIS-image-large.
TEXT_FLOWS = {
    "xlarge": (
        dict(model_channels=1280, cond_channels=768, num_blocks=28, num_heads=16, qk_rms_norm_cross=True),
        dict(model_channels=1280, cond_channels=768, num_blocks=28, num_heads=16, num_io_res_blocks=3,
             io_block_channels=[256]),
    ),
    "large": (
        dict(model_channels=1024, cond_channels=768, num_blocks=24, num_heads=16),
        dict(model_channels=1024, cond_channels=768, num_blocks=24, num_heads=16, io_block_channels=[128]),
    ),
    "base": (
        dict(model_channels=768, cond_channels=768, num_blocks=12, num_heads=12),
        dict(model_channels=768, cond_channels=768, num_blocks=12, num_heads=12, io_block_channels=[128]),
    ),
}  # fmt: skip


def sampler(steps: int, cfg: float) -> dict:
    return {
        "name": "FlowEulerGuidanceIntervalSampler",
        "args": {"sigma_min": 1e-5},
        "params": {"steps": steps, "cfg_strength": cfg, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0},
    }


def _pipeline(name: str, models: dict, guidance: float, **condition: str) -> dict:
    """pipeline.json: checkpoint paths, both samplers at 25 steps, the conditioning model."""
    return {
        "name": name,
        "args": {
            "models": {key: f"ckpts/{stem}" for key, (stem, _, _) in models.items()},
            "sparse_structure_sampler": sampler(25, guidance),
            "slat_sampler": sampler(25, guidance),
            "slat_normalization": SLAT_NORMALIZATION,
            **condition,
        },
    }


def image_large() -> tuple[dict, dict[str, tuple[str, str, dict]]]:
    """(pipeline.json, {key: (stem, class, args)}) of TRELLIS-image-large."""
    models = dict(IMAGE_LARGE_MODELS)
    return _pipeline("TrellisImageTo3DPipeline", models, 5.0, image_cond_model="dinov2_vitl14_reg"), models


def text(size: str = "xlarge") -> tuple[dict, dict[str, tuple[str, str, dict]]]:
    ss, slat = TEXT_FLOWS[size]
    letter = {"xlarge": "XL", "large": "L", "base": "B"}[size]
    _, _, ss_base = IMAGE_LARGE_MODELS["sparse_structure_flow_model"]
    _, _, slat_base = IMAGE_LARGE_MODELS["slat_flow_model"]
    models = dict(IMAGE_LARGE_MODELS)
    ss_stem = f"ss_flow_txt_dit_{letter}_16l8_fp16"
    models["sparse_structure_flow_model"] = (ss_stem, "SparseStructureFlowModel", dict(ss_base, **ss))
    models["slat_flow_model"] = (
        f"slat_flow_txt_dit_{letter}_64l8p2_fp16",
        "SLatFlowModel",
        dict(slat_base, **slat),
    )
    pipeline = _pipeline(
        "TrellisTextTo3DPipeline", models, 7.5, text_cond_model="openai/clip-vit-large-patch14"
    )
    return pipeline, models
