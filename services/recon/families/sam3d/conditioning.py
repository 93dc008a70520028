"""SAM 3D Objects' condition embedder, written for threegen in plain torch with the published names.

Both SAM 3D generators condition on one token sequence built by upstream's `EmbedderFuser`
(facebookresearch/sam-3d-objects, SAM License; read for facts, not copied). Each configured
embedder (two DINOv2 ViT-L/14-reg, one for RGB and one for masks, plus a small point-map encoder in
stage 1) embeds a few named inputs; every embedder has a SwiGLU projection to the common width,
and each input gets a learned "group" embedding (`cropped` object crop vs. `full` image) added.
The per-input token blocks are concatenated in config order.

This module is built from the yaml node `module.condition_embedder.backbone` of
`ss_generator.yaml` / `slat_generator.yaml` without hydra or torch.hub, and its state-dict keys
are the checkpoint's keys under `_base_models.condition_embedder.` with that prefix stripped, so
`load_state_dict(strict=True)` takes them. The DINO backbones are services/recon/dinov2.py (the
hub's parameter names); their weights come from the generator checkpoint.

Matches upstream (eval mode): bilinear resize to `input_size` inside the DINO embedder, 1-channel
masks repeated to RGB, ImageNet normalisation (`normalize_images`), the two DINO outputs
(`[cls, patches]` after the affine final norm, or with `prenorm_features` the un-normalised
`[cls, registers, patches]` through a plain layer norm), the point-map encoder (nearest resize,
non-finite points -> learned token, one attention block per window, window CLS tokens plus a
bilinearly resized grid embedding), `force_drop_modalities` (zeroed tokens), the projection nets
and group embeddings, token order.

Deliberate differences: training-only modality dropout (`dropout_prob`,
`drop_modalities_weight`) is accepted and ignored; a missing input raises a KeyError naming it
(upstream logs and then fails on the lookup); the whole module computes in the dtype of its
weights (inputs are cast on entry; resizing and the point validity test run in fp32, layer norms
outside DINO in fp32), where upstream relies on CUDA autocast; unconditional tokens (zeros) are
the generator's business, not this module's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from services.recon.dinov2 import DinoVisionTransformer, Mlp, SelfAttention, ViTConfig

TARGET_PREFIX = "sam3d_objects.model.backbone.dit.embedder."
FUSER_TARGET = TARGET_PREFIX + "embedder_fuser.EmbedderFuser"
DINO_TARGET = TARGET_PREFIX + "dino.Dino"
POINTMAP_TARGET = TARGET_PREFIX + "pointmap.PointPatchEmbed"

# torch.hub names of the DINOv2 register variants -> network shapes. All are trained at 518 px
# with 14 px patches and 4 registers; the published SAM 3D configs use `dinov2_vitl14_reg`.
# `build_condition_embedder(..., dino_configs=...)` adds or overrides entries (tests use a tiny one).
DINO_CONFIGS: dict[str, ViTConfig] = {
    "dinov2_vits14_reg": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14_reg": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14_reg": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerNorm32(nn.LayerNorm):
    """Layer norm computed in fp32 (what autocast does upstream), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def _weight_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


# -- DINO image embedder ----------------------------------------------------------------


class DinoEmbedder(nn.Module):
    """A DINOv2 backbone applied to images or masks resized to `input_size` (upstream `Dino`).

    Returns `[cls, patches]` after the backbone's final norm, or with `prenorm_features` all
    tokens `[cls, registers, patches]` before it, through a parameter-free layer norm.
    """

    def __init__(
        self,
        config: ViTConfig,
        input_size: int = 224,
        normalize_images: bool = True,
        prenorm_features: bool = False,
        prune_network: bool = False,
    ):
        super().__init__()
        self.backbone = DinoVisionTransformer(config)
        self.embed_dim = config.embed_dim
        self.input_size = input_size
        self.normalize_images = normalize_images
        self.prenorm_features = prenorm_features
        if prune_network:  # upstream drops the unused parameters from the module (and checkpoint)
            self.backbone.mask_token = None
            if prenorm_features:
                self.backbone.norm = nn.Identity()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def num_tokens(self) -> int:
        grid = (self.input_size // self.backbone.config.patch_size) ** 2
        return 1 + grid + (self.backbone.config.num_register_tokens if self.prenorm_features else 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) in [0, 1] -> (B, tokens, embed_dim)."""
        size = (self.input_size, self.input_size)
        x = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.normalize_images:
            x = (x - self.mean.float()) / self.std.float()
        tokens = self.backbone.tokens(x.to(_weight_dtype(self.backbone)))
        if self.prenorm_features:
            return F.layer_norm(tokens.float(), tokens.shape[-1:]).to(tokens.dtype)
        tokens = self.backbone.norm(tokens)
        registers = self.backbone.config.num_register_tokens
        return torch.cat([tokens[:, :1], tokens[:, 1 + registers :]], dim=1)


# -- point-map embedder -----------------------------------------------------------------


def remap_points(points: torch.Tensor, kind: str) -> torch.Tensor:
    """Upstream's `PointRemapper` forward maps, compressing the range of (x, y, z) points."""
    if kind == "linear":
        return points
    if kind == "sinh":
        return torch.asinh(points)
    xy, z = points.split([2, 1], dim=-1)
    if kind == "exp":
        return torch.cat([xy / (1 + z), torch.log1p(z)], dim=-1)
    if kind == "exp_disparity":
        return torch.cat([xy / z, torch.log(z)], dim=-1)
    if kind == "sinh_exp":
        return torch.cat([torch.asinh(xy), torch.log(z.clamp(min=1e-8))], dim=-1)
    raise ValueError(f"unknown remap_output {kind!r}")


REMAP_KINDS = ("linear", "sinh", "exp", "sinh_exp", "exp_disparity")


class WindowBlock(nn.Module):
    """timm's ViT block as upstream configures it (no layer scale), with timm's key names."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PointPatchEmbed(nn.Module):
    """Point map (B, 3, H, W) -> one token per `patch_size`^2 window (upstream `PointPatchEmbed`).

    The map is resized (nearest) to `input_size`; every point is projected to `embed_dim`, with a
    learned token where the point is not finite; a CLS token attends over each window's points and
    becomes the window's token, plus a learned grid position embedding.
    """

    heads = 16  # fixed upstream
    mlp_ratio = 2.0

    def __init__(
        self,
        input_size: int = 256,
        patch_size: int = 8,
        embed_dim: int = 768,
        remap_output: str = "exp",
        dropout_prob: float = 0.0,
        force_dropout_always: bool = False,
    ):
        super().__init__()
        if remap_output not in REMAP_KINDS:
            raise ValueError(f"unknown remap_output {remap_output!r}; expected one of {REMAP_KINDS}")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.input_size, self.patch_size, self.embed_dim = input_size, patch_size, embed_dim
        self.remap_output = remap_output
        self.force_dropout_always = force_dropout_always
        grid = input_size // patch_size
        self.point_proj = nn.Linear(3, embed_dim)
        self.invalid_xyz_token = nn.Parameter(torch.zeros(embed_dim))
        # Upstream replaces a dropped point map by this token; it exists only with dropout_prob > 0.
        self.dropped_xyz_token = nn.Parameter(torch.zeros(embed_dim)) if dropout_prob > 0 else None
        if force_dropout_always and self.dropped_xyz_token is None:
            raise ValueError("force_dropout_always needs dropout_prob > 0 (no dropped_xyz_token)")
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, 1 + patch_size * patch_size, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList([WindowBlock(embed_dim, self.heads, self.mlp_ratio)])

    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def _grid_position(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed.float(), size=(rows, cols), mode="bilinear", align_corners=False)
        return pos.permute(0, 2, 3, 1).reshape(1, rows * cols, self.embed_dim).to(dtype)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) points, NaN/inf where unknown -> (B, (input_size / patch_size)^2, embed_dim)."""
        dtype = _weight_dtype(self)
        points = F.interpolate(xyz.float(), size=self.input_size, mode="nearest").permute(0, 2, 3, 1)
        valid = points.isfinite().all(dim=-1, keepdim=True)
        points = remap_points(torch.where(valid, points, torch.zeros_like(points)), self.remap_output)
        x = self.point_proj(points.to(dtype))
        x = torch.where(valid, x, self.invalid_xyz_token.to(x.dtype))

        batch, height, width, dim = x.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        x = x.view(batch, rows, p, cols, p, dim).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed_window.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        position = self._grid_position(rows, cols, x.dtype)
        out = x[:, 0].reshape(batch, rows * cols, dim) + position
        if self.force_dropout_always and not self.training:
            # Upstream's forced (inference) dropout: every window becomes the dropped token.
            out = (self.dropped_xyz_token.to(x.dtype) + position).expand(batch, -1, -1)
        return out


# -- projection and fuser ---------------------------------------------------------------


class SwiGLU(nn.Module):
    """Llama-3 feed-forward (w2(silu(w1 x) * w3 x), no biases) with Llama's hidden-size rounding."""

    def __init__(self, dim: int, hidden: int, out_dim: int, multiple_of: int = 256):
        super().__init__()
        hidden = int(2 * hidden / 3)
        hidden = multiple_of * math.ceil(hidden / multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, out_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def projection_net(in_dim: int, out_dim: int, multiplier: float, pre_norm: bool) -> nn.Sequential:
    """Keys `0.*` (layer norm, or nothing) and `1.{w1,w2,w3}`, as upstream's Sequential."""
    norm = LayerNorm32(in_dim) if pre_norm else nn.Identity()
    return nn.Sequential(norm, SwiGLU(in_dim, int(multiplier * out_dim), out_dim))


Route = tuple[str, str | None]  # (input name, positional group or None)


class ConditionEmbedder(nn.Module):
    """Upstream's `EmbedderFuser`: named inputs -> one (B, T, C) condition token sequence.

    `embedders[i]` embeds each input named in `routes[i]`, in order; its tokens go through
    `projection_nets[i]` and get `idx_emb[group]` added. Extra keyword inputs are ignored (the
    pipeline passes its whole input dict, e.g. point-map scale/shift).
    """

    def __init__(
        self,
        embedders: list[nn.Module],
        routes: list[list[Route]],
        use_pos_embedding: str = "learned",
        projection_pre_norm: bool = True,
        projection_net_hidden_dim_multiplier: float = 4.0,
        compression_projection_multiplier: float = 0.0,
        force_drop_modalities: Iterable[str] | None = None,
    ):
        super().__init__()
        self.module_list = nn.ModuleList(embedders)
        self.routes = [[(str(name), group) for name, group in r] for r in routes]
        self.embed_dims = max(e.embed_dim for e in embedders)
        self.group_index: dict[str, int] = {}
        for route in self.routes:
            for _, group in route:
                if group is not None and group not in self.group_index:
                    self.group_index[group] = len(self.group_index)
        rows = len(self.group_index) + 1  # upstream keeps one spare row
        self.use_pos_embedding = use_pos_embedding
        if use_pos_embedding == "learned":
            self.idx_emb = nn.Parameter(torch.zeros(rows, self.embed_dims))
        elif use_pos_embedding == "random":  # a fixed random table, stored in the checkpoint as a buffer
            self.register_buffer("idx_emb", torch.zeros(rows, 1, self.embed_dims))
        else:
            raise ValueError(f"unknown use_pos_embedding {use_pos_embedding!r}")
        self.projection_nets = None
        if projection_net_hidden_dim_multiplier > 0:
            self.projection_nets = nn.ModuleList(
                projection_net(
                    e.embed_dim, self.embed_dims, projection_net_hidden_dim_multiplier, projection_pre_norm
                )
                for e in embedders
            )
        self.compression_projector = None
        if compression_projection_multiplier > 0:  # upstream option; channel-concat then project
            width = sum(e.embed_dim for e, r in zip(embedders, self.routes, strict=True) for _ in r)
            self.compression_projector = projection_net(
                width, self.embed_dims, compression_projection_multiplier, projection_pre_norm
            )
        self.force_drop_modalities = list(force_drop_modalities or [])

    @property
    def input_names(self) -> list[str]:
        return [name for route in self.routes for name, _ in route]

    def num_tokens(self) -> int:
        """Output sequence length for inputs of any size (every embedder resizes its input)."""
        counts = [e.num_tokens() for e, r in zip(self.module_list, self.routes, strict=True) for _ in r]
        return counts[0] if self.compression_projector is not None else sum(counts)

    def _group_embedding(self, group: str, dtype: torch.dtype) -> torch.Tensor:
        row = self.idx_emb[self.group_index[group]]
        return row.reshape(1, 1, -1).to(dtype)

    def forward(self, drop_modalities: Iterable[str] | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Named inputs -> tokens (B, T, embed_dims), blocks in config order.

        `drop_modalities` (default: the `force_drop_modalities` attribute) names inputs whose
        token blocks are zeroed, as upstream's CFG point-map branch does.
        """
        drop = set(self.force_drop_modalities if drop_modalities is None else drop_modalities)
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise KeyError(f"condition embedder inputs missing: {missing}")
        dtype = self.idx_emb.dtype
        blocks = []
        for i, (embedder, route) in enumerate(zip(self.module_list, self.routes, strict=True)):
            for name, group in route:
                tokens = embedder(inputs[name])
                if self.projection_nets is not None:
                    tokens = self.projection_nets[i](tokens.to(_weight_dtype(self.projection_nets[i])))
                tokens = tokens.to(dtype)
                if group is not None:
                    tokens = tokens + self._group_embedding(group, tokens.dtype)
                if name in drop:
                    tokens = torch.zeros_like(tokens)
                blocks.append(tokens)
        if self.compression_projector is not None:
            fused = torch.cat(blocks, dim=-1)
            return self.compression_projector(fused.to(_weight_dtype(self.compression_projector)))
        return torch.cat(blocks, dim=1)


# -- construction from the yaml node ----------------------------------------------------

_DINO_KEYS = {
    "_target_", "input_size", "repo_or_dir", "dino_model", "source", "backbone_kwargs",
    "normalize_images", "prenorm_features", "freeze_backbone", "prune_network",
}  # fmt: skip
_POINTMAP_KEYS = {
    "_target_", "input_size", "patch_size", "embed_dim", "remap_output", "dropout_prob",
    "force_dropout_always",
}  # fmt: skip
_FUSER_KEYS = {
    "_target_", "embedder_list", "use_pos_embedding", "projection_pre_norm",
    "projection_net_hidden_dim_multiplier", "compression_projection_multiplier", "freeze",
    "drop_modalities_weight", "dropout_prob", "force_drop_modalities",
}  # fmt: skip


def _check_keys(node: Mapping, allowed: set[str], what: str) -> None:
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ValueError(f"{what}: unsupported config keys {unknown}")


def _build_embedder(node: Mapping, dino_configs: Mapping[str, ViTConfig]) -> nn.Module:
    target = node.get("_target_")
    if target == DINO_TARGET:
        _check_keys(node, _DINO_KEYS, target)
        name = node.get("dino_model", "dinov2_vitb14")
        if name not in dino_configs:
            raise ValueError(f"unknown dino_model {name!r}; known: {sorted(dino_configs)}")
        # torch.hub arguments: where the code comes from does not matter here, but a kwarg that
        # would reshape the network must not be silently ignored.
        extra = set(node.get("backbone_kwargs") or {}) - {"pretrained"}
        if extra:
            raise ValueError(f"{target}: unsupported backbone_kwargs {sorted(extra)}")
        return DinoEmbedder(
            dino_configs[name],
            input_size=int(node.get("input_size", 224)),
            normalize_images=bool(node.get("normalize_images", True)),
            prenorm_features=bool(node.get("prenorm_features", False)),
            prune_network=bool(node.get("prune_network", False)),
        )
    if target == POINTMAP_TARGET:
        _check_keys(node, _POINTMAP_KEYS, target)
        return PointPatchEmbed(
            input_size=int(node.get("input_size", 256)),
            patch_size=int(node.get("patch_size", 8)),
            embed_dim=int(node.get("embed_dim", 768)),
            remap_output=str(node.get("remap_output", "exp")),
            dropout_prob=float(node.get("dropout_prob", 0.0)),
            force_dropout_always=bool(node.get("force_dropout_always", False)),
        )
    raise ValueError(f"unknown condition embedder _target_ {target!r}")


def build_condition_embedder(
    cfg: Mapping, dino_configs: Mapping[str, ViTConfig] | None = None
) -> ConditionEmbedder:
    """The yaml node `module.condition_embedder.backbone` (as `yaml.safe_load` gives it) -> module.

    `dino_configs` adds or overrides entries of DINO_CONFIGS (`dino_model` name -> ViTConfig).
    Weights are left at zero; load `_base_models.condition_embedder.*` (prefix stripped) strictly.
    With `freeze` (the published ss config) the module is returned in eval mode without grads.
    """
    target = cfg.get("_target_", FUSER_TARGET)
    if target != FUSER_TARGET:
        raise ValueError(f"unknown condition embedder _target_ {target!r}")
    _check_keys(cfg, _FUSER_KEYS, target)
    configs = {**DINO_CONFIGS, **(dino_configs or {})}
    embedders, routes = [], []
    for entry in cfg["embedder_list"]:
        node, route = entry
        embedders.append(_build_embedder(node, configs))
        routes.append([(name, group) for name, group in route])
    module = ConditionEmbedder(
        embedders,
        routes,
        use_pos_embedding=cfg.get("use_pos_embedding", "learned"),
        projection_pre_norm=bool(cfg.get("projection_pre_norm", True)),
        projection_net_hidden_dim_multiplier=float(cfg.get("projection_net_hidden_dim_multiplier", 4.0)),
        compression_projection_multiplier=float(cfg.get("compression_projection_multiplier", 0.0)),
        force_drop_modalities=cfg.get("force_drop_modalities"),
    )
    if cfg.get("freeze", False):
        module.requires_grad_(False).eval()
    return module
