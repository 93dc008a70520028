"""SAM 3D Objects checkpoints in the published layout (facebook/sam-3d-objects), tiny or full-size.

`configs(FULL)` gives the yaml files as the published repository holds them (the facts are in the
family's README); `configs(TINY)` the same structure with small widths for tests, whose random
weights `write_tiny_sam3d` saves in the real formats: generators as `{"state_dict": ...}` under
`_base_models.generator.` / `_base_models.condition_embedder.`, decoders as raw state dicts, plus a
tiny MoGe (`moge/model.pt`) named by pipeline.yaml's depth model. Tiny choices that the loader
must honour: a 4^3 shape latent (published: 16^3) decoded to a 16^3 occupancy, a SLat resolution
of 16 (published: 64), and a DINO named `tiny_dinov2` whose shape the loader reads off the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from services.recon.dinov2 import ViTConfig

PKG = "sam3d_objects.model.backbone."
FUSER = PKG + "dit.embedder.embedder_fuser.EmbedderFuser"
DINO = PKG + "dit.embedder.dino.Dino"
POINTS = PKG + "dit.embedder.pointmap.PointPatchEmbed"
LATENT = PKG + "tdfy_dit.models.mm_latent."
SLAT_MEAN = [
    0.12211431,
    0.37204156,
    -1.26521907,
    -2.05276058,
    -3.10432536,
    -0.11294304,
    -0.85146744,
    0.45506954,
]
SLAT_STD = [2.37326008, 2.13174402, 2.2413953, 2.30589401, 2.1191894, 1.8969511, 2.41684989, 2.08374642]


@dataclass(frozen=True)
class Widths:
    dino: str  # dino_model name
    dino_size_ss: int
    dino_size_slat: int
    points_dim: int
    points_input: int
    model: int
    blocks: int
    heads: int
    shape_grid: int
    slat_resolution: int
    io_channels: int
    decoder_channels: tuple[int, int, int]
    decoder_blocks: int
    gs_model: int
    mesh_model: int
    decoder_heads: int
    image_size: int  # preprocessor resize


FULL = Widths(
    "dinov2_vitl14_reg", 770, 1036, 512, 256, 1024, 24, 16, 16, 64, 128, (512, 128, 32), 12, 768, 768, 12, 770
)
TINY = Widths("tiny_dinov2", 28, 28, 32, 16, 64, 1, 4, 4, 16, 32, (32, 16, 8), 1, 64, 256, 4, 56)
TINY_DINO = {
    "embed_dim": 64,
    "depth": 1,
    "num_heads": 1,
    "patch_size": 14,
    "image_size": 28,
    "num_register_tokens": 4,
}


def _dino(w: Widths, size: int, prenorm: bool) -> dict:
    node = {"_target_": DINO, "dino_model": w.dino, "input_size": size, "normalize_images": True}
    if prenorm:
        node["prenorm_features"] = True
    return node


def _embedder(w: Widths, stage: str) -> dict:
    size = w.dino_size_ss if stage == "ss" else w.dino_size_slat
    entries = [
        [_dino(w, size, stage == "slat"), [["image", "cropped"], ["rgb_image", "full"]]],
        [_dino(w, size, stage == "slat"), [["mask", "cropped"], ["rgb_image_mask", "full"]]],
    ]
    if stage == "ss":
        points = {
            "_target_": POINTS,
            "embed_dim": w.points_dim,
            "input_size": w.points_input,
            "patch_size": 8,
            "remap_output": "linear",
        }
        entries.append([points, [["pointmap", "cropped"], ["rgb_pointmap", "full"]]])
    return {
        "_target_": FUSER,
        "embedder_list": entries,
        "projection_net_hidden_dim_multiplier": 4.0,
        "use_pos_embedding": "learned",
        "freeze": True,
    }


def _latent(w: Widths, channels: int, shape: bool = False) -> dict:
    if shape:
        embedder = {
            "_target_": LATENT + "ShapePositionEmbedder",
            "model_channels": w.model,
            "resolution": w.shape_grid,
            "patch_size": 1,
        }
    else:
        embedder = {"_target_": LATENT + "LearntPositionEmbedder", "model_channels": w.model, "token_len": 1}
    return {
        "_target_": LATENT + "Latent",
        "in_channels": channels,
        "model_channels": w.model,
        "pos_embedder": embedder,
    }


def _transformer(w: Widths) -> dict:
    return {
        "model_channels": w.model,
        "cond_channels": w.model,
        "num_blocks": w.blocks,
        "num_heads": w.heads,
        "mlp_ratio": 4,
        "pe_mode": "ape",
        "qk_rms_norm": True,
        "use_fp16": w is FULL,
        "in_channels": 8,
        "out_channels": 8,
        "condition_embedder": None,
        "force_zeros_cond": True,
    }


def configs(w: Widths) -> dict[str, dict]:
    ss_backbone = {
        "_target_": PKG + "tdfy_dit.models.mot_sparse_structure_flow.SparseStructureFlowTdfyWrapper",
        **_transformer(w),
        "resolution": w.shape_grid,
        "patch_size": 1,
        "is_shortcut_model": True,
        "latent_mapping": {
            "6drotation_normalized": _latent(w, 6),
            "scale": _latent(w, 3),
            "translation": _latent(w, 3),
            "translation_scale": _latent(w, 1),
            "shape": _latent(w, 8, shape=True),
        },
        "latent_share_transformer": {
            "6drotation_normalized": ["6drotation_normalized", "translation", "scale", "translation_scale"]
        },
    }
    slat_backbone = {
        "_target_": PKG + "tdfy_dit.models.structured_latent_flow.SLatFlowModelTdfyWrapper",
        **_transformer(w),
        "resolution": w.slat_resolution,
        "patch_size": 2,
        "io_block_channels": [w.io_channels],
        "num_io_res_blocks": 2,
    }
    cfg = PKG + "generator.classifier_free_guidance."
    ss = {
        "module": {
            "condition_embedder": {"backbone": _embedder(w, "ss")},
            "generator": {
                "backbone": {
                    "_target_": PKG + "generator.shortcut.model.ShortCut",
                    "inference_steps": 2,
                    "rescale_t": 1,
                    "time_scale": 1000.0,
                    "sigma_min": 0.0,
                    "reverse_fn": {
                        "_target_": cfg + "ClassifierFreeGuidanceWithExternalUnconditionalProbability",
                        "strength": 2.0,
                        "interval": [0, 500],
                        "unconditional_handling": "add_flag",
                        "backbone": ss_backbone,
                    },
                }
            },
        }
    }
    slat = {
        "module": {
            "condition_embedder": {"backbone": _embedder(w, "slat")},
            "generator": {
                "backbone": {
                    "_target_": PKG + "generator.flow_matching.model.FlowMatching",
                    "inference_steps": 12,
                    "time_scale": 1000.0,
                    "sigma_min": 0.0,
                    "reverse_fn": {
                        "_target_": cfg + "ClassifierFreeGuidance",
                        "strength": 0.0,
                        "unconditional_handling": "add_flag",
                        "backbone": slat_backbone,
                    },
                }
            },
        }
    }
    vae = PKG + "tdfy_dit.models."
    gaussian = {
        "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
        "perturb_offset": True,
        "voxel_size": 0.5,
        "num_gaussians": 32,
        "2d_filter_kernel_size": 0.1,
        "3d_filter_kernel_size": 0.0009,
        "scaling_bias": 0.004,
        "opacity_bias": 0.1,
        "scaling_activation": "softplus",
    }
    decoder = {
        "resolution": w.slat_resolution,
        "latent_channels": 8,
        "num_blocks": w.decoder_blocks,
        "num_heads": w.decoder_heads,
        "mlp_ratio": 4,
        "attn_mode": "swin",
        "window_size": 8,
        "use_fp16": w is FULL,
    }
    return {
        "ss_generator": ss,
        "slat_generator": slat,
        "ss_decoder": {
            "_target_": vae + "sparse_structure_vae.SparseStructureDecoderTdfyWrapper",
            "out_channels": 1,
            "latent_channels": 8,
            "num_res_blocks": 2 if w is FULL else 1,
            "num_res_blocks_middle": 2,
            "channels": list(w.decoder_channels),
            "reshape_input_to_cube": False,
        },
        "slat_decoder_gs": {
            "_target_": vae + "structured_latent_vae.decoder_gs.SLatGaussianDecoderTdfyWrapper",
            **decoder,
            "model_channels": w.gs_model,
            "representation_config": gaussian,
        },
        "slat_decoder_mesh": {
            "_target_": vae + "structured_latent_vae.decoder_mesh.SLatMeshDecoderTdfyWrapper",
            **decoder,
            "model_channels": w.mesh_model,
            "representation_config": {"use_color": True},
            "device": "cuda",
        },
    }


def _preprocessor(size: int, crop_first: bool) -> dict:
    pad = {
        "_target_": "sam3d_objects.data.dataset.tdfy.img_processing.pad_to_square_centered",
        "_partial_": True,
    }
    crop = {
        "_target_": "sam3d_objects.data.dataset.tdfy.img_and_mask_transforms.crop_around_mask_with_padding",
        "_partial_": True,
        "box_size_factor": 1.2,
        "padding_factor": 0.0,
    }
    node = {
        "_target_": "sam3d_objects.data.dataset.tdfy.preprocessor.PreProcessor",
        "img_transform": {
            "_target_": "torchvision.transforms.Compose",
            "transforms": [pad, {"_target_": "torchvision.transforms.Resize", "size": size}],
        },
        "mask_transform": {
            "_target_": "torchvision.transforms.Compose",
            "transforms": [
                pad,
                {"_target_": "torchvision.transforms.Resize", "size": size, "interpolation": 0},
            ],
        },
    }
    if crop_first:
        node["img_mask_joint_transform"] = [crop]
    else:  # stage 1: image, mask and point map cropped together, point map normalised
        resize_all = {
            "_target_": "sam3d_objects.data.dataset.tdfy.img_and_mask_transforms.resize_all_to_same_size",
            "_partial_": True,
        }
        node["img_mask_joint_transform"] = []
        node["img_mask_pointmap_joint_transform"] = [resize_all, crop]
        node["normalize_pointmap"] = True
        node["pointmap_normalizer"] = {
            "_target_": "sam3d_objects.data.dataset.tdfy.img_and_mask_transforms.ObjectCentricSSI",
            "allow_scale_and_shift_override": True,
            "use_scene_scale": True,
        }
        node["pointmap_transform"] = node["mask_transform"]
    return node


def pipeline(w: Widths, depth: str = "Ruicheng/moge-vitl", steps: int = 25) -> dict:
    files = {
        f"{m}_{part}_path": f"{m}.{'yaml' if part == 'config' else 'ckpt'}"
        for m in ("ss_generator", "slat_generator", "ss_decoder", "slat_decoder_gs", "slat_decoder_mesh")
        for part in ("config", "ckpt")
    }
    return {
        "_target_": "sam3d_objects.pipeline.inference_pipeline_pointmap.InferencePipelinePointMap",
        **files,
        "pad_size": 1.0,
        "dtype": "float16",
        "version": "3dfy_v9",
        "slat_cfg_strength": 2,
        "slat_rescale_t": 1,
        "downsample_ss_dist": 1,
        "compile_model": True,
        "ss_inference_steps": steps,
        "slat_inference_steps": steps,
        "ss_condition_input_mapping": [],
        "slat_condition_input_mapping": [],
        "ss_preprocessor": _preprocessor(w.image_size, False),
        "slat_preprocessor": _preprocessor(w.image_size, True),
        "pose_decoder_name": "ScaleShiftInvariant",
        "depth_model": {
            "_target_": "sam3d_objects.pipeline.depth_models.moge.MoGe",
            "model": {
                "_target_": "moge.model.v1.MoGeModel.from_pretrained",
                "pretrained_model_name_or_path": depth,
            },
        },
        "slat_mean": SLAT_MEAN,
        "slat_std": SLAT_STD,
    }


def _randomize(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.05) -> None:
    """Small random weights (upstream's init zeroes output layers); norm gains stay at one."""
    for name, param in module.named_parameters():
        owners = name.split(".")[:-1]  # module path; latent names such as 6drotation_normalized are not norms
        if name.endswith("gamma") or any(o.startswith("norm") or o.endswith("_norm") for o in owners):
            continue
        param.data = torch.randn(param.shape, generator=generator) * scale


def write_checkpoints(
    folder: Path,
    w: Widths,
    init: Callable[[torch.nn.Module], None],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    dino_shapes: dict | None = None,
    depth: str = "moge",
    steps: int = 25,
) -> dict[str, torch.nn.Module]:
    """The yaml files and `.ckpt` pickles of the published layout, weights set by `init`; returns
    the decoders (still in memory) so that callers can adjust them before they are saved again."""
    from services.recon.families.sam3d import loader

    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs(w).items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(pipeline(w, depth, steps), sort_keys=False))
    files = loader.PipelineFiles(folder, pipeline(w))
    for name in ("ss_generator", "slat_generator"):
        with torch.device(device):
            network, embedder = loader.generator_networks(files, name, dino_shapes)
        init(network)
        init(embedder)
        state = {
            f"{loader.GENERATOR_PREFIX}reverse_fn.backbone.{k}": v.to(dtype).cpu()
            for k, v in network.state_dict().items()
        }
        state.update(
            {loader.EMBEDDER_PREFIX + k: v.to(dtype).cpu() for k, v in embedder.state_dict().items()}
        )
        torch.save({"state_dict": state}, folder / f"{name}.ckpt")
        del network, embedder, state
    decoders = {}
    for name in ("ss_decoder", "slat_decoder_gs", "slat_decoder_mesh"):
        with torch.device(device):
            decoders[name] = loader.decoder_network(files, name)
        init(decoders[name])
        torch.save(
            {k: v.to(dtype).cpu() for k, v in decoders[name].state_dict().items()}, folder / f"{name}.ckpt"
        )
    return decoders


def write_tiny_sam3d(root: Path, seed: int = 0, steps: int = 2) -> Path:
    """A tiny published layout under `root/checkpoints/` (as the HF repository keeps it)."""
    from services.recon.moge import write_tiny_moge

    folder = root / "checkpoints"
    generator = torch.Generator().manual_seed(seed)
    decoders = write_checkpoints(
        folder,
        TINY,
        lambda m: _randomize(m, generator),
        dino_shapes={TINY.dino: ViTConfig(**TINY_DINO)},
        steps=steps,
    )
    decoder = decoders["ss_decoder"]  # about 8% of the 16^3 grid occupied for latents near N(0, 1)
    with torch.no_grad():
        side = TINY.shape_grid
        logits = decoder(torch.randn(2, 8, side, side, side, generator=generator))
    decoder.out_layer[2].bias.data -= torch.quantile(logits.flatten(), 0.92)
    torch.save(decoder.state_dict(), folder / "ss_decoder.ckpt")
    write_tiny_moge(folder / "moge", seed=seed)
    return root
