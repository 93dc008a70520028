"""MoGe v1 (microsoft/MoGe, `moge/model/v1.py`): monocular point maps, written for threegen.

SAM 3D Objects builds its object point map from MoGe's output by default (HF `Ruicheng/moge-vitl`,
file `model.pt`, a `torch.save` dict `{"model_config": {...}, "model": state_dict}`). Upstream's
package pulls in utils3d, OpenCV, torch.hub-style DINOv2 code and an online download; this module
is the same network and the same `infer` post-processing in plain torch (plus scipy's
Levenberg-Marquardt for the focal/shift fit), so the published checkpoint loads strictly and gives
the same numbers without those packages.

What matches upstream:
- parameter names and shapes (`backbone.*` is a DINOv2 ViT without registers, `head.*` the
  convolutional decoder, `image_mean` / `image_std` buffers), and the network built from
  `model_config`, legacy keys included (`trained_area_range` -> `num_tokens_range`);
- the token budget per resolution level, the two-step resize (bicubic to the budget, bilinear down
  to a multiple of 14), DINOv2's offset-based position-embedding interpolation, the output remap,
  the raw-logit mask threshold, the focal/shift recovery on a 64x64 nearest-resized map, the
  normalised intrinsics and the re-projection of the depth map.

What deliberately differs:
- resizing and normalising the input happen in fp32 before the network runs in the model's dtype,
  and the head output is cast to fp32 before it is resized to the input size (upstream resizes in
  the autocast dtype); fp32 results are unaffected;
- re-projection divides by fx, fy instead of multiplying by an inverted matrix (ulp-level only);
- `model_config` may carry `encoder_config` (embed_dim, depth, num_heads) to shrink the named
  encoder; only threegen's tiny test checkpoints use it.

Output convention: `points` are in OpenCV camera space (x right, y down, z forward, depth = z), up
to one unknown global scale; `intrinsics` are normalised (principal point (0.5, 0.5), focal
lengths in units of the image width / height).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from services.recon.dinov2 import DinoVisionTransformer, ViTConfig
from threegen.weights import CheckpointMismatch, WeightsNotFound, check_state_dict, resolve

log = logging.getLogger("threegen.recon.moge")

CHECKPOINT = "model.pt"
PATCH = 14  # the head assumes DINOv2's 14-pixel patches whatever the encoder
FIT_SIZE = (64, 64)  # the point map is nearest-resized to this before the focal/shift fit

# The encoders upstream can name in `model_config["encoder"]` (torch.hub DINOv2, no registers).
# dinov2_vitg14 uses a SwiGLU MLP with other parameter names; no MoGe v1 checkpoint uses it.
ENCODERS: dict[str, ViTConfig] = {
    "dinov2_vits14": ViTConfig(embed_dim=384, depth=12, num_heads=6, num_register_tokens=0),
    "dinov2_vitb14": ViTConfig(embed_dim=768, depth=12, num_heads=12, num_register_tokens=0),
    "dinov2_vitl14": ViTConfig(embed_dim=1024, depth=24, num_heads=16, num_register_tokens=0),
}

# `model_config` of the published `Ruicheng/moge-vitl` checkpoint (the one SAM 3D Objects uses).
MOGE_VITL_CONFIG: dict[str, Any] = {
    "encoder": "dinov2_vitl14",
    "remap_output": "exp",
    "output_mask": True,
    "split_head": True,
    "intermediate_layers": 4,
    "dim_upsample": [256, 128, 64],
    "dim_times_res_block_hidden": 2,
    "num_res_blocks": 2,
    "trained_area_range": [250000, 500000],
    "last_conv_channels": 32,
    "last_conv_size": 1,
}

# Keys older checkpoints carry that no longer change the network (the v1 head always has a mask).
_IGNORED_KEYS = {"output_mask", "split_head", "trained_diagonal_size_range"}


# --------------------------------------------------------------------------------------------------
# Backbone


class MoGeBackbone(DinoVisionTransformer):
    """threegen's DINOv2 ViT in the form MoGe's checkpoint holds it: torch.hub's register-free
    model, whose position embeddings are resized with the hub's scale-factor-plus-0.1 rule and no
    antialiasing (the register variant in dinov2.py resizes by size, antialiased)."""

    interpolate_offset = 0.1

    def __init__(self, config: ViTConfig):
        if config.num_register_tokens:
            raise ValueError("MoGe's DINOv2 encoders have no register tokens")
        super().__init__(config)
        del self.register_tokens  # absent from the hub's register-free state dict

    def _position(self, height: int, width: int) -> torch.Tensor:
        pos = self.pos_embed
        side = math.isqrt(pos.shape[1] - 1)
        if height == width == side:
            return pos
        grid = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # Passing scale factors (not a size) makes the sampling positions those of the hub code.
        scale = ((height + self.interpolate_offset) / side, (width + self.interpolate_offset) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if grid.shape[-2:] != (height, width):
            raise RuntimeError(f"position grid {tuple(grid.shape[-2:])} != {(height, width)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, height * width, -1)
        return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.intermediate(images, [len(self.blocks) - 1], norm=False)[0]

    def intermediate(
        self, images: torch.Tensor, layers: int | Sequence[int], norm: bool = True
    ) -> list[torch.Tensor]:
        """Token maps (B, 1 + patches, C) after the chosen blocks (an int n: the last n), each
        through the final LayerNorm when `norm`, as the hub's get_intermediate_layers returns."""
        depth = len(self.blocks)
        take = range(depth - layers, depth) if isinstance(layers, int) else list(layers)
        batch, _, height, width = images.shape
        p = self.config.patch_size
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        x = x + self._position(height // p, width // p).to(x.dtype)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in take:
                outputs.append(self.norm(x) if norm else x)
        if len(outputs) != len(take):
            raise ValueError(f"intermediate layers {list(take)} not all in a {depth}-block encoder")
        return outputs


# --------------------------------------------------------------------------------------------------
# Head


class ResidualConvBlock(nn.Module):
    """Pre-activation residual block (norm, ReLU, 3x3 conv, twice) with replicate padding."""

    def __init__(self, channels: int, out_channels: int, hidden: int, norm: str = "group_norm"):
        super().__init__()
        groups = hidden // 32 if norm == "group_norm" else 1
        self.layers = nn.Sequential(
            nn.GroupNorm(1, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, hidden, 3, padding=1, padding_mode="replicate"),
            nn.GroupNorm(groups, hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 3, padding=1, padding_mode="replicate"),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_connection(x) + self.layers(x)


def view_plane_uv(width: int, height: int, aspect: float, device: torch.device | None = None) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates on the view plane, scaled so that the image's half
    diagonal is 1 for the given aspect (W / H); the head appends them so it knows the shape."""
    span_x = aspect / math.sqrt(1 + aspect**2)
    span_y = 1 / math.sqrt(1 + aspect**2)
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, device=device)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


def _with_uv(x: torch.Tensor, aspect: float) -> torch.Tensor:
    uv = view_plane_uv(x.shape[-1], x.shape[-2], aspect, x.device).to(x.dtype)
    return torch.cat([x, uv.permute(2, 0, 1).expand(x.shape[0], -1, -1, -1)], dim=1)


class Head(nn.Module):
    """Sum of 1x1 projections of the chosen encoder layers, three 2x upsampling stages, then one
    small conv stack per output (3 channels of points, 1 of mask logits) at the input size."""

    def __init__(
        self,
        num_features: int,
        dim_in: int,
        dim_out: Sequence[int] = (3, 1),
        dim_proj: int = 512,
        dim_upsample: Sequence[int] = (256, 128, 128),
        dim_times_res_block_hidden: int = 1,
        num_res_blocks: int = 1,
        res_block_norm: str = "group_norm",
        last_res_blocks: int = 0,
        last_conv_channels: int = 32,
        last_conv_size: int = 1,
    ):
        super().__init__()
        hidden = dim_times_res_block_hidden
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, dim_proj, 1) for _ in range(num_features))
        stages = []
        for cin, cout in zip([dim_proj, *dim_upsample[:-1]], dim_upsample, strict=True):
            upsample = nn.Sequential(
                nn.ConvTranspose2d(cin + 2, cout, kernel_size=2, stride=2),
                nn.Conv2d(cout, cout, 3, padding=1, padding_mode="replicate"),
            )
            blocks = [
                ResidualConvBlock(cout, cout, hidden * cout, res_block_norm) for _ in range(num_res_blocks)
            ]
            stages.append(nn.Sequential(upsample, *blocks))
        self.upsample_blocks = nn.ModuleList(stages)
        last = last_conv_channels
        self.output_block = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim_upsample[-1] + 2, last, 3, padding=1, padding_mode="replicate"),
                *(
                    ResidualConvBlock(last, last, hidden * last, res_block_norm)
                    for _ in range(last_res_blocks)
                ),
                nn.ReLU(inplace=True),
                nn.Conv2d(last, out, last_conv_size, padding=last_conv_size // 2, padding_mode="replicate"),
            )
            for out in dim_out
        )

    def forward(self, features: Sequence[torch.Tensor], height: int, width: int) -> list[torch.Tensor]:
        """`features`: normed token maps (B, 1 + patches, C) with the class token first; `height`,
        `width`: the resized image the tokens came from (its patch grid is floor(size / 14))."""
        grid = (height // PATCH, width // PATCH)
        aspect = width / height
        x = sum(
            proj(tokens[:, 1:].transpose(1, 2).unflatten(2, grid).contiguous())
            for proj, tokens in zip(self.projects, features, strict=True)
        )
        for stage in self.upsample_blocks:
            x = stage(_with_uv(x, aspect))
        x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
        x = _with_uv(x, aspect)
        return [block(x) for block in self.output_block]


# --------------------------------------------------------------------------------------------------
# Focal / shift recovery


def _fit_focal_shift(
    uv: np.ndarray, xyz: np.ndarray, focal: np.floating | None = None
) -> tuple[float, float]:
    """Find the z shift (and, unless given, the focal) making `focal * xy / (z + shift)` land on
    the view-plane coordinates `uv` in the least-squares sense.

    For a fixed shift the best focal is a closed-form ratio, so only the shift is searched, by
    scipy's MINPACK Levenberg-Marquardt from 0 with a 1e-3 cost tolerance and finite-difference
    Jacobians: the settings MoGe was published with, so the early stop lands where its does.
    """
    from scipy.optimize import least_squares

    uv = uv.reshape(-1, 2)
    xy = xyz[..., :2].reshape(-1, 2)
    z = xyz[..., 2].reshape(-1)

    def best_focal(projected: np.ndarray) -> np.floating:
        return (projected * uv).sum() / np.square(projected).sum()

    def residuals(shift: np.ndarray) -> np.ndarray:
        projected = xy / (z + shift[0])[:, None]
        scale = best_focal(projected) if focal is None else focal
        return (scale * projected - uv).reshape(-1)

    result = least_squares(residuals, x0=0.0, method="lm", ftol=1e-3)
    shift = np.float32(result.x[0])
    if focal is None:
        focal = best_focal(xy / (z + shift)[:, None])
    return float(focal), float(shift)


def recover_focal_shift(
    points: torch.Tensor, mask: torch.Tensor | None, focal: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image focal (relative to the half diagonal) and z shift for an affine-invariant point
    map (B, H, W, 3): upstream fits them on a nearest-resized 64x64 copy of the masked points."""
    batch, height, width, _ = points.shape
    uv = view_plane_uv(width, height, width / height, points.device).to(points.dtype)
    points_lr = F.interpolate(points.permute(0, 3, 1, 2), FIT_SIZE, mode="nearest").permute(0, 2, 3, 1)
    uv_lr = F.interpolate(uv.permute(2, 0, 1)[None], FIT_SIZE, mode="nearest")[0].permute(1, 2, 0)
    points_np = points_lr.detach().cpu().numpy()
    uv_np = uv_lr.cpu().numpy()
    if mask is not None:
        mask_lr = F.interpolate(mask.float()[:, None], FIT_SIZE, mode="nearest")[:, 0] > 0
        mask_np = mask_lr.cpu().numpy()
    focal_np = None if focal is None else focal.detach().cpu().numpy()
    focals, shifts = [], []
    for i in range(batch):
        pts, uvs = (points_np[i], uv_np) if mask is None else (points_np[i][mask_np[i]], uv_np[mask_np[i]])
        if uvs.reshape(-1, 2).shape[0] < 2:
            focals.append(1.0)
            shifts.append(0.0)
            continue
        f, s = _fit_focal_shift(uvs, pts, None if focal_np is None else focal_np[i])
        focals.append(f)
        shifts.append(s)
    as_tensor = lambda v: torch.tensor(v, device=points.device, dtype=points.dtype)  # noqa: E731
    return (as_tensor(focals) if focal is None else focal.reshape(batch)), as_tensor(shifts)


# --------------------------------------------------------------------------------------------------
# Model


class MoGeModel(nn.Module):
    """MoGe v1 with the published checkpoint's parameter names; build it from `model_config`."""

    image_mean: torch.Tensor
    image_std: torch.Tensor

    def __init__(
        self,
        encoder: str = "dinov2_vitb14",
        intermediate_layers: int | Sequence[int] = 4,
        dim_proj: int = 512,
        dim_upsample: Sequence[int] = (256, 128, 128),
        dim_times_res_block_hidden: int = 1,
        num_res_blocks: int = 1,
        remap_output: str = "linear",
        res_block_norm: str = "group_norm",
        num_tokens_range: Sequence[int] = (1200, 2500),
        last_res_blocks: int = 0,
        last_conv_channels: int = 32,
        last_conv_size: int = 1,
        mask_threshold: float = 0.5,
        encoder_config: dict[str, int] | None = None,
        **legacy: Any,
    ):
        super().__init__()
        if "trained_area_range" in legacy:  # older configs gave the budget in pixels
            low, high = legacy.pop("trained_area_range")
            num_tokens_range = (low // PATCH**2, high // PATCH**2)
        unknown = {k: v for k, v in legacy.items() if k not in _IGNORED_KEYS}
        if unknown:
            warnings.warn(f"MoGe config keys ignored: {sorted(unknown)}", stacklevel=2)
        if encoder not in ENCODERS:
            raise ValueError(f"unsupported MoGe encoder {encoder!r}; known: {sorted(ENCODERS)}")
        if remap_output not in ("linear", "sinh", "exp", "sinh_exp"):
            raise ValueError(f"unsupported remap_output {remap_output!r}")
        vit = ENCODERS[encoder]
        if encoder_config:
            vit = dataclasses.replace(vit, **encoder_config)
        self.encoder = encoder
        self.remap_output = remap_output
        self.intermediate_layers = intermediate_layers
        self.num_tokens_range = tuple(num_tokens_range)
        self.mask_threshold = mask_threshold
        self.backbone = MoGeBackbone(vit)
        layers = intermediate_layers if isinstance(intermediate_layers, int) else len(intermediate_layers)
        self.head = Head(
            num_features=layers,
            dim_in=vit.embed_dim,
            dim_out=(3, 1),
            dim_proj=dim_proj,
            dim_upsample=list(dim_upsample),
            dim_times_res_block_hidden=dim_times_res_block_hidden,
            num_res_blocks=num_res_blocks,
            res_block_norm=res_block_norm,
            last_res_blocks=last_res_blocks,
            last_conv_channels=last_conv_channels,
            last_conv_size=last_conv_size,
        )
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.projects[0].weight.dtype

    def num_tokens(self, resolution_level: int) -> int:
        """Token budget for a level in 0..9: linear between the trained range's ends."""
        low, high = self.num_tokens_range
        return int(low + (resolution_level / 9) * (high - low))

    def _remap(self, points: torch.Tensor) -> torch.Tensor:
        if self.remap_output == "linear":
            return points
        if self.remap_output == "sinh":
            return torch.sinh(points)
        xy, z = points.split([2, 1], dim=-1)
        if self.remap_output == "exp":
            z = torch.exp(z)
            return torch.cat([xy * z, z], dim=-1)
        return torch.cat([torch.sinh(xy), torch.exp(z)], dim=-1)  # sinh_exp

    def forward(self, image: torch.Tensor, num_tokens: int) -> dict[str, torch.Tensor]:
        """Raw affine-invariant points (B, H, W, 3) and mask logits (B, H, W), both fp32, for
        images (B, 3, H, W) in [0, 1] run at about `num_tokens` patches."""
        height, width = image.shape[-2:]
        factor = math.sqrt(num_tokens * PATCH**2 / (height * width))
        rh, rw = int(height * factor), int(width * factor)
        x = image.float()
        x = F.interpolate(x, (rh, rw), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.image_mean.float()) / self.image_std.float()
        grid = (rh // PATCH * PATCH, rw // PATCH * PATCH)
        x = F.interpolate(x, grid, mode="bilinear", align_corners=False, antialias=True)
        features = self.backbone.intermediate(x.to(self.dtype), self.intermediate_layers)
        points, mask = self.head(features, rh, rw)
        points = F.interpolate(points.float(), (height, width), mode="bilinear", align_corners=False)
        mask = F.interpolate(mask.float(), (height, width), mode="bilinear", align_corners=False)
        return {"points": self._remap(points.permute(0, 2, 3, 1)), "mask": mask[:, 0]}

    @torch.inference_mode()
    def infer(
        self,
        image: torch.Tensor,
        resolution_level: int = 9,
        force_projection: bool = True,
        apply_mask: bool = True,
        fov_x: float | torch.Tensor | None = None,
        num_tokens: int | None = None,
        amp: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """Camera-space point map of an image (3, H, W) or (B, 3, H, W) with values in [0, 1].

        Returns `points` (…, H, W, 3), `depth` (…, H, W), `mask` (…, H, W) bool and normalised
        `intrinsics` (…, 3, 3), all fp32 on the model's device, with the batch axis dropped for a
        single image. `resolution_level` 0..9 sets the token budget (`num_tokens` overrides it);
        `fov_x` (degrees) fixes the horizontal field of view instead of estimating it;
        `force_projection` rebuilds the points from depth and intrinsics; `apply_mask` sets
        points and depth outside the mask to +inf. `amp` runs the network under autocast to that
        dtype (e.g. torch.float16 on CUDA); otherwise it runs in the model's dtype.
        """
        single = image.dim() == 3
        if single:
            image = image[None]
        image = image.to(self.device)
        height, width = image.shape[-2:]
        aspect = width / height
        tokens = self.num_tokens(resolution_level) if num_tokens is None else num_tokens

        autocast = torch.autocast(self.device.type, dtype=amp) if amp is not None else nullcontext()
        with autocast:
            raw = self.forward(image, tokens)

        # Geometry in fp32 whatever autocast context the caller runs us in.
        with torch.autocast(self.device.type, enabled=False):
            points, logits = raw["points"].float(), raw["mask"].float()
            mask = logits > self.mask_threshold
            if fov_x is None:
                focal, shift = recover_focal_shift(points, mask)
            else:
                fov = torch.as_tensor(fov_x, device=points.device, dtype=torch.float32)
                focal = aspect / math.sqrt(1 + aspect**2) / torch.tan(torch.deg2rad(fov) / 2)
                focal = focal.reshape(-1).expand(points.shape[0])
                _, shift = recover_focal_shift(points, mask, focal=focal)
            half_diagonal = math.sqrt(1 + aspect**2)
            fx = focal / 2 * half_diagonal / aspect
            fy = focal / 2 * half_diagonal
            intrinsics = torch.zeros(points.shape[0], 3, 3, device=points.device)
            intrinsics[:, 0, 0], intrinsics[:, 1, 1] = fx, fy
            intrinsics[:, 0, 2] = intrinsics[:, 1, 2] = 0.5
            intrinsics[:, 2, 2] = 1.0
            depth = points[..., 2] + shift[:, None, None]
            if force_projection:
                points = unproject(depth, intrinsics)
            else:
                points = points.clone()
                points[..., 2] += shift[:, None, None]
            if apply_mask:
                points = torch.where(mask[..., None], points, torch.inf)
                depth = torch.where(mask, depth, torch.inf)

        out = {"points": points, "depth": depth, "mask": mask, "intrinsics": intrinsics}
        return {k: v[0] for k, v in out.items()} if single else out


def unproject(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """OpenCV unprojection of depth maps (B, H, W) through normalised intrinsics (B, 3, 3) at the
    pixel centres ((j + 0.5) / W, (i + 0.5) / H)."""
    _, height, width = depth.shape
    u = (torch.arange(width, device=depth.device, dtype=depth.dtype) + 0.5) / width
    v = (torch.arange(height, device=depth.device, dtype=depth.dtype) + 0.5) / height
    fx, fy = intrinsics[:, 0, 0, None, None], intrinsics[:, 1, 1, None, None]
    cx, cy = intrinsics[:, 0, 2, None, None], intrinsics[:, 1, 2, None, None]
    x = (u[None, None, :] - cx) / fx * depth
    y = (v[None, :, None] - cy) / fy * depth
    return torch.stack([x, y, depth], dim=-1)


# --------------------------------------------------------------------------------------------------
# Loading


def _checkpoint_file(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    folder = resolve(str(source), allow_patterns=[CHECKPOINT])
    file = folder / CHECKPOINT
    if not file.is_file():
        raise WeightsNotFound(f"no {CHECKPOINT} in MoGe weights folder {folder}")
    return file


def load_moge(
    source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MoGeModel:
    """A MoGe v1 `model.pt` (a file, a folder holding one, or an HF repo id such as
    `Ruicheng/moge-vitl`) as an eval-mode model on `device` in `dtype`, loaded strictly."""
    file = _checkpoint_file(source)
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"model_config", "model"} <= checkpoint.keys():
        raise CheckpointMismatch(f"MoGe checkpoint {file}: expected a dict with model_config and model")
    with torch.device("meta"):  # no time spent initialising weights that are overwritten next
        model = MoGeModel(**checkpoint["model_config"])
    check_state_dict(model, checkpoint["model"], f"MoGe checkpoint {file}")
    model.load_state_dict(checkpoint["model"], strict=True, assign=True)
    log.info("loaded MoGe %s from %s", checkpoint["model_config"].get("encoder"), file)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Tiny checkpoint for tests


TINY_CONFIG: dict[str, Any] = {
    "encoder": "dinov2_vits14",
    "encoder_config": {"embed_dim": 64, "depth": 2, "num_heads": 4},
    "intermediate_layers": 2,
    "dim_proj": 32,
    "dim_upsample": [32, 16, 16],
    "dim_times_res_block_hidden": 2,
    "num_res_blocks": 1,
    "remap_output": "exp",
    "num_tokens_range": [48, 96],
    "last_conv_channels": 16,
    "last_conv_size": 1,
}


def write_tiny_moge(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a random-weight `model.pt` in the published format (about 1.3 MB) into `folder`.

    `overrides` update TINY_CONFIG. Random heads give a point map with no camera in it, so the
    output convolutions are steered (when `last_res_blocks` is 0): the point head passes the
    view-plane coordinates through, so x/z, y/z follow a pinhole of focal about 1 with depth
    near 1, and the mask head keeps roughly the right half of the image. Random features still
    add noise, so the focal/shift fit has something to do.
    """
    config = {**TINY_CONFIG, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MoGeModel(**config)
        with torch.no_grad():
            for tensor in (model.backbone.cls_token, model.backbone.pos_embed, model.backbone.mask_token):
                tensor.normal_(std=0.02)
            if not config.get("last_res_blocks", 0):
                _steer_tiny_outputs(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model_config": config, "model": state}, path)
    return path


def _steer_tiny_outputs(model: MoGeModel) -> None:
    u, v = -2, -1  # the view-plane channels the head appends last
    points_in, _, points_out = model.head.output_block[0]
    mask_in, _, mask_out = model.head.output_block[1]
    # Hidden channels 0..3 carry relu(u), relu(-u), relu(v), relu(-v) from the 3x3 centre tap.
    for conv in (points_in, mask_in):
        conv.weight[:4].zero_()
        conv.bias[:4].zero_()
        for channel, (source, sign) in enumerate([(u, 1.0), (u, -1.0), (v, 1.0), (v, -1.0)]):
            conv.weight[channel, source, 1, 1] = sign
    points_out.weight.mul_(0.05)
    points_out.bias.zero_()
    points_out.weight[:2, :4] = 0.0
    points_out.weight[0, 0, 0, 0], points_out.weight[0, 1, 0, 0] = 1.0, -1.0  # raw x = u
    points_out.weight[1, 2, 0, 0], points_out.weight[1, 3, 0, 0] = 1.0, -1.0  # raw y = v
    mask_out.weight.mul_(0.02)
    mask_out.weight[0, :4] = torch.tensor([4.0, 0.0, 0.0, 0.0]).view(4, 1, 1)  # logit rises with u
    mask_out.bias.fill_(model.mask_threshold - 0.1)
