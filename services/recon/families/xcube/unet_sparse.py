"""XCube's fine-stage diffusion UNet (`unet_sparse_crossattn.UNetModel`) on threegen's sparse tensors.

XCube runs this network on fVDB grids. The same network is written here in plain torch, on
`services.recon.sparse.SparseTensor`, with parameter names and shapes equal to XCube's, so the
published `unet.*` / `unet_ema.*` tensors of `fine_diffusion/last.ckpt` load unchanged.

The network, as XCube builds it:

- a sinusoidal timestep encoding (cos half first, then sin) of width `model_channels`, then
  `time_emb` = Linear, SiLU, Linear to 4 x model_channels;
- `encoder_blocks`: a 3^3 sparse conv from the input channels, then per level `num_res_blocks`
  x [ResBlock, SpatialTransformer] and, below the last level, a ResBlock that average-pools by 2;
- `middle_block`: ResBlock, SpatialTransformer (always with self-attention), ResBlock;
- `decoder_blocks`: per level (deepest first) `num_res_blocks + 1` x [ResBlock on the skip
  tensor concatenated with the running one, SpatialTransformer], the last of each level above
  the finest ending with a ResBlock that upsamples (nearest) onto the next skip tensor's grid;
- `out_block`: GroupNorm, SiLU, 3^3 sparse conv to `out_channels`.

ResBlocks use scale-shift conditioning: GroupNorm(h) * (1 + scale) + shift with (scale, shift)
from the time embedding of the voxel's sample. Down/up ResBlocks resample after the first
GroupNorm+SiLU and before the first conv, and resample the skip path the same way.

Each SpatialTransformer is GroupNorm, Linear in, one BasicTransformerBlock per depth (self-
attention over all voxels of a sample, only where the resolution factor is in
`attention_resolutions` or in the middle; cross-attention to the text tokens with the key mask;
a GEGLU feed-forward; pre-LayerNorms), Linear out, plus the input. As in XCube, the head width
`dim_head` of the middle block and of every decoder transformer is the one of the deepest encoder
level (channels // num_heads there), so decoder transformers at shallow levels project to a wider
inner width than their channel count.

Operations and their fVDB semantics:

- sparse conv 3^3 with stride 1 on the voxels of the grid (submanifold). fVDB stores the weight
  as the logical tensor (out, in, k0, k1, k2); here k0, k1, k2 are taken to run along x, y, z
  and the tap k to read the neighbour at offset k - 1 (cross-correlation, as spconv and
  torch). A 1x1x1 conv (the skip connections) has a plain (out, in) weight;
- average pooling by 2 onto the coarsened grid: the sum of the present children divided by 8
  (fVDB divides by the window volume, not by the number of present children);
- nearest upsampling onto a given finer grid: each fine voxel copies its parent's features.
  The finer grid is always one this network pooled from, so every fine voxel has a parent;
- GroupNorm per grid (per sample), computed in fp32; LayerNorm per voxel;
- attention per sample through torch's scaled_dot_product_attention.

Coordinates: the input's (x, y, z) must be fVDB's ijk up to a translation by a multiple of
2^(len(channel_mult) - 1) per axis, so that coarsening groups the same 2x2x2 blocks as fVDB's
(floor(ijk / 2)). Negative ijk are fine: the network shifts coordinates internally.

Not reproduced: XCube's zero initialisation of the residual output convs (irrelevant for loading
weights) and dropout (inference only; the modules are kept for the key names, they have none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from services.recon import sparse as sp
from services.recon.families.xcube import unet_dense
from services.recon.families.xcube.unet_dense import FeedForward, unet_args, vae_latent_channels
from services.recon.families.xcube.vae import FvdbSparseConv3d
from services.recon.sparse import SparseTensor

__all__ = ["SparseUNet", "sparse_unet_args"]


# -- sparse building blocks ---------------------------------------------------------------------


class _FeatureMap(nn.Module):
    """An elementwise module applied to a SparseTensor's features (fVDB's ElementwiseMixin)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.module(x.feats))


def _silu() -> nn.Module:
    return _FeatureMap(nn.SiLU())


def _dropout(p: float) -> nn.Module:
    return _FeatureMap(nn.Dropout(p))


# fVDB's stride-1 convolution, shared with the VAE (one kernel-axis convention: k2 <-> i, k0 <-> k).
FvdbConv3d = FvdbSparseConv3d


def _coarse_level(x: SparseTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2x-coarsened grid of x's grid: (coarse coords (M, 4), parent row of each voxel of x)."""
    key = ("xcube_parent", x.scale)
    if key not in x.spatial:
        coords = x.coords.long().clone()
        coords[:, 1:] = torch.div(coords[:, 1:], 2, rounding_mode="floor")
        low = coords[:, 1:].min(dim=0).values if len(coords) else coords.new_zeros(3)
        coords[:, 1:] -= low  # packed keys need non-negative coordinates
        span = int(coords.max()) + 1 if len(coords) else 1
        code = ((coords[:, 0] * span + coords[:, 1]) * span + coords[:, 2]) * span + coords[:, 3]
        unique, parent = torch.unique(code, return_inverse=True)  # sorted: rows stay grouped by batch
        coarse = torch.stack(
            [unique // span**3, (unique // span**2) % span, (unique // span) % span, unique % span], dim=1
        )
        coarse[:, 1:] += low
        coarse = coarse.to(x.coords.dtype)
        x.spatial[key] = (coarse, parent)
    return x.spatial[key]


def avg_pool2(x: SparseTensor) -> SparseTensor:
    """fVDB's AvgPool(2) onto the coarsened grid: sum of the present children / 8."""
    coarse, parent = _coarse_level(x)
    out = x.feats.new_zeros(coarse.shape[0], x.feats.shape[1])
    out.index_add_(0, parent, x.feats)
    return SparseTensor(out / 8, coarse, x.spatial, x.scale * 2)


def upsample_nearest2(x: SparseTensor, target: SparseTensor) -> SparseTensor:
    """fVDB's UpsamplingNearest(2) onto `target`'s grid, which x's grid was pooled from."""
    if x.scale != 2 * target.scale or x.spatial is not target.spatial:
        raise ValueError("upsampling onto a grid that the input was not pooled from")
    coarse, parent = _coarse_level(target)
    if coarse.shape[0] != x.feats.shape[0]:
        raise ValueError("upsampling input does not lie on the target's coarsened grid")
    return target.replace(x.feats[parent])


def _per_sample_rows(x: SparseTensor) -> list[tuple[int, slice]]:
    return [(b, rows) for b, rows in enumerate(x.layout()) if rows.stop > rows.start]


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, heads * d) -> (1, heads, n, d): the '(h d)' channel split of XCube's rearrange."""
    return t.reshape(t.shape[0], heads, -1).transpose(0, 1).unsqueeze(0)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """(1, heads, n, d) -> (n, heads * d)."""
    return t[0].transpose(0, 1).reshape(t.shape[2], -1)


# -- attention ----------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """XCube's sparse `Attention`: every voxel attends to all voxels of its own grid."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(query_dim, inner, bias=False)
        self.to_v = nn.Linear(query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: SparseTensor) -> SparseTensor:
        q, k, v = self.to_q(x.feats), self.to_k(x.feats), self.to_v(x.feats)
        out = q.new_zeros(q.shape)
        for _, rows in _per_sample_rows(x):
            attended = F.scaled_dot_product_attention(*(_heads(t[rows], self.heads) for t in (q, k, v)))
            out[rows] = _merge(attended)
        return x.replace(self.to_out(out))


class CrossAttention(unet_dense.CrossAttention):
    """XCube's sparse `CrossAttention`: a grid's voxels attend to its sample's context tokens.
    The layers (and their keys) are the dense one's; the boolean key mask (True = attend) is
    applied per sample."""

    def forward(self, x: SparseTensor, context: torch.Tensor, mask: torch.Tensor | None) -> SparseTensor:
        q = self.to_q(x.feats)
        context = context.to(self.to_k.weight.dtype)
        k, v = self.to_k(context), self.to_v(context)  # (B, L, inner)
        out = q.new_zeros(q.shape)
        for b, rows in _per_sample_rows(x):
            c = b if k.shape[0] > 1 else 0
            attn_mask = None
            if mask is not None:
                attn_mask = mask[c if mask.shape[0] > 1 else 0].reshape(1, 1, 1, -1).to(torch.bool)
            attended = F.scaled_dot_product_attention(
                _heads(q[rows], self.heads), _heads(k[c], self.heads), _heads(v[c], self.heads),
                attn_mask=attn_mask,
            )  # fmt: skip
            out[rows] = _merge(attended)
        return x.replace(self.to_out(out))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, disable_sa: bool,
                 dropout: float = 0.0):  # fmt: skip
        super().__init__()
        self.disable_sa = disable_sa
        if not disable_sa:
            self.attn1 = SelfAttention(dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        if not disable_sa:
            self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: SparseTensor, context: torch.Tensor, mask: torch.Tensor | None) -> SparseTensor:
        if not self.disable_sa:
            x = x.replace(self.attn1(x.replace(self.norm1(x.feats))).feats + x.feats)
        x = x.replace(self.attn2(x.replace(self.norm2(x.feats)), context, mask).feats + x.feats)
        return x.replace(self.ff(self.norm3(x.feats)) + x.feats)


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None,
                 disable_sa: bool, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        inner = heads * dim_head
        self.norm = sp.SparseGroupNorm32(32, channels)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner, heads, dim_head, context_dim, disable_sa, dropout)
                for _ in range(depth)
            ]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: SparseTensor, context: torch.Tensor, mask: torch.Tensor | None) -> SparseTensor:
        if x.feats.shape[0] == 0:
            return x
        h = x.replace(self.proj_in(self.norm(x).feats))
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        return x.replace(self.proj_out(h.feats) + x.feats)


# -- residual blocks ----------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 up: bool = False, down: bool = False):  # fmt: skip
        super().__init__()
        out_channels = out_channels or channels
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.in_layers = nn.Sequential(
            sp.SparseGroupNorm32(32, channels), _silu(), FvdbConv3d(channels, out_channels, 3)
        )
        self.out_layers = nn.Sequential(
            sp.SparseGroupNorm32(32, out_channels), _silu(), _dropout(dropout),
            FvdbConv3d(out_channels, out_channels, 3),
        )  # fmt: skip
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = FvdbConv3d(channels, out_channels, 1)

    def forward(self, x: SparseTensor, emb: torch.Tensor, target: SparseTensor | None = None) -> SparseTensor:
        if self.up or self.down:
            h = self.in_layers[1](self.in_layers[0](x))
            if self.up:
                if target is None:
                    raise ValueError("an upsampling block needs the finer grid to upsample onto")
                h = self.in_layers[2](upsample_nearest2(h, target))
                x = upsample_nearest2(x, h)
            else:
                h = self.in_layers[2](avg_pool2(h))
                x = avg_pool2(x)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).chunk(2, dim=-1)  # (B, C) each
        batch = h.batch
        normed = self.out_layers[0](h).feats
        h = h.replace(normed * (1 + scale[batch].to(normed.dtype)) + shift[batch].to(normed.dtype))
        for layer in self.out_layers[1:]:
            h = layer(h)
        skip = x if isinstance(self.skip_connection, nn.Identity) else self.skip_connection(x)
        return h.replace(h.feats + skip.feats)


class TimestepSequential(nn.Sequential):
    """Runs ResBlocks with the time embedding (and target grid), transformers with the context."""

    def forward(self, x, emb, target=None, context=None, mask=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, target)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, mask)
            else:
                x = layer(x)
        return x


# -- the UNet -----------------------------------------------------------------------------------


class SparseUNet(nn.Module):
    """XCube's `UNetModel` (unet_sparse_crossattn.py), constructed from the same keyword arguments.

    Unknown keyword arguments (XCube's configs pass `dims`, `image_size`, `use_middle_attention`,
    `use_spatial_transformer`) are accepted and ignored, as XCube's constructor does."""

    def __init__(
        self,
        num_input_channels: int,
        model_channels: int,
        num_res_blocks: int | list[int],
        out_channels: int | None = None,
        dropout: float = 0.0,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 4, 8),
        num_classes: int | None = None,
        attention_resolutions: tuple[int, ...] | list[int] = (),
        num_heads: int = 8,
        transformer_depth: int | list[int] = 1,
        context_dim: int | None = 1024,
        **_ignored,
    ):
        super().__init__()
        channel_mult = list(channel_mult)
        levels = len(channel_mult)
        depth = (
            [transformer_depth] * levels if isinstance(transformer_depth, int) else list(transformer_depth)
        )
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * levels
        elif len(num_res_blocks) != levels:
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        attention_resolutions = list(attention_resolutions)
        self.in_channels = num_input_channels
        self.model_channels = model_channels
        self.out_channels = out_channels or num_input_channels
        self.num_classes = num_classes
        self.levels = levels
        emb_dim = 4 * model_channels
        self.time_emb = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Linear(num_classes, emb_dim)

        def transformer(channels: int, level_depth: int, dim_head: int, self_attention: bool):
            disable_sa = not self_attention
            return SpatialTransformer(
                channels, num_heads, dim_head, level_depth, context_dim, disable_sa, dropout
            )

        self.encoder_blocks = nn.ModuleList(
            [TimestepSequential(FvdbConv3d(num_input_channels, model_channels, 3))]
        )
        skips = [model_channels]
        current = model_channels
        ds = 1
        dim_head = current // num_heads
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks[level]):
                block = [ResBlock(current, emb_dim, dropout, model_channels * mult)]
                current = model_channels * mult
                dim_head = current // num_heads
                block.append(transformer(current, depth[level], dim_head, ds in attention_resolutions))
                self.encoder_blocks.append(TimestepSequential(*block))
                skips.append(current)
            if level < levels - 1:
                self.encoder_blocks.append(
                    TimestepSequential(ResBlock(current, emb_dim, dropout, current, down=True))
                )
                skips.append(current)
                ds *= 2

        # XCube keeps using the deepest encoder level's dim_head from here on.
        self.middle_block = TimestepSequential(
            ResBlock(current, emb_dim, dropout),
            transformer(current, depth[-1], dim_head, True),
            ResBlock(current, emb_dim, dropout),
        )

        self.decoder_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            mult = channel_mult[level]
            for i in range(num_res_blocks[level] + 1):
                block = [ResBlock(current + skips.pop(), emb_dim, dropout, model_channels * mult)]
                current = model_channels * mult
                block.append(transformer(current, depth[level], dim_head, ds in attention_resolutions))
                if level > 0 and i == num_res_blocks[level]:
                    block.append(ResBlock(current, emb_dim, dropout, current, up=True))
                    ds //= 2
                self.decoder_blocks.append(TimestepSequential(*block))

        if current != model_channels:
            raise ValueError("channel_mult must start with 1")
        self.out_block = nn.Sequential(
            sp.SparseGroupNorm32(32, current), _silu(), FvdbConv3d(current, self.out_channels, 3)
        )

    def timestep_encoding(self, timesteps: torch.Tensor, max_period: int = 10000) -> torch.Tensor:
        dim = self.model_channels
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
        )
        args = timesteps[:, None].float() * freqs[None]
        encoding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            encoding = torch.cat([encoding, torch.zeros_like(encoding[:, :1])], dim=-1)
        return encoding

    def forward(
        self,
        x: SparseTensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> SparseTensor:
        """x: features (N, num_input_channels) on coords (N, 4) grouped by batch; timesteps (B,)
        (or one value for all samples); context (B, L, context_dim); context_mask (B, L) bool,
        True = attend. Returns (N, out_channels) at x's coordinates, in x's row order."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("labels y must be given exactly when the model has num_classes")
        if context is None:
            raise ValueError("XCube's sparse UNet cross-attends to a context in every transformer")
        batch_size = max(x.batch_size, context.shape[0])
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(batch_size)
        weight_dtype = self.time_emb[0].weight.dtype
        emb = self.time_emb(self.timestep_encoding(timesteps).to(weight_dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(weight_dtype))

        # A private copy of the grid, shifted to non-negative coordinates by a multiple of the
        # deepest pooling stride so that every coarsening groups the same blocks as on the ijk.
        coords = x.coords.long().clone()
        if len(coords):
            stride = 2 ** (self.levels - 1)
            low = coords[:, 1:].min(dim=0).values
            coords[:, 1:] -= torch.div(low, stride, rounding_mode="floor") * stride
        h = SparseTensor(x.feats, coords.to(torch.int32), {}, 1)

        skips = []
        for block in self.encoder_blocks:
            h = block(h, emb, context=context, mask=context_mask)
            skips.append(h)
        h = self.middle_block(h, emb, context=context, mask=context_mask)
        for block in self.decoder_blocks:
            skip = skips.pop()
            h = skip.replace(torch.cat([skip.feats, h.feats], dim=1))
            h = block(h, emb, skips[-1] if skips else None, context=context, mask=context_mask)
        h = self.out_block(h)
        return x.replace(h.feats)


# -- configuration ------------------------------------------------------------------------------


def latent_channels(vae_config: Mapping) -> int:
    """The VAE's latent width, as XCube's diffusion Model computes it from the VAE's hparams."""
    return vae_latent_channels(vae_config)


def sparse_unet_args(config: Mapping, vae_config: Mapping | None = None) -> dict:
    """The fine (sparse) UNet's constructor arguments, as XCube's diffusion `Model.__init__` builds
    them; the latent width comes from `vae_config` when given, else it is the published fine
    VAE's (8)."""
    return unet_args(config, "UNetModel_Sparse_CrossAttn", vae_config=vae_config)
