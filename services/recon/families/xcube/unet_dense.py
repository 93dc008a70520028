"""XCube's coarse (dense 3D) diffusion UNet, written for threegen in plain torch.

Architecture facts come from nv-tlabs/XCube (`xcube/modules/diffusionmodules/openaimodel/unet_dense.py`
and `attention_dense.py`, an LDM / openai-style UNet run with `dims=3`). This is threegen's own code: the
constructor takes the same keyword arguments as XCube's `UNetModel`, and the module tree reproduces the
published parameter names, so the `unet.*` part of a coarse-diffusion `last.ckpt` (prefix stripped)
loads with `load_state_dict(strict=True)`.

What the network computes (fp32 is bit-for-bit the same recipe as upstream):

- sinusoidal timestep embedding (cos half first, then sin) -> Linear -> SiLU -> Linear (4x width);
  an optional class vector goes through a Linear and is added (`adm` conditioning);
- ResBlocks: GroupNorm(32) -> SiLU -> 3^3 conv, FiLM-style scale/shift from the embedding when
  `use_scale_shift_norm`, dropout, zero-initialised 3^3 conv, 1x1 (or 3^3) skip; up/down ResBlocks
  resample both branches (nearest x2 / average-pool x2) between the first norm and the first conv;
- SpatialTransformer: GroupNorm(32, eps 1e-6) -> 1x1x1 conv -> per token: self-attention,
  cross-attention to the text context (key mask honoured, True = attend), GEGLU feed-forward, each
  pre-LayerNorm with a residual -> 1x1x1 conv (zero-initialised) + residual;
- or, without a spatial transformer, the openai AttentionBlock (1-D conv qkv, split q/k/v before heads);
- skip concatenation on the way up, GroupNorm -> SiLU -> zero-initialised 3^3 conv to `out_channels`.

Differences from upstream, all numerically neutral in fp32:

- Input and output are dense (B, C, D, H, W) tensors; XCube wraps the same network between
  `VDBTensor.to_dense()` and `grid.read_from_dense(...)`.
- All group norms (including the transformer's, which upstream runs in the input dtype) are computed in
  fp32 with fp32 affine parameters and cast back, so the network is safe to run in fp16 / bf16.
- The timestep embedding and the context are cast to the parameters' dtype; a scalar timestep is
  broadcast over the batch.
- On CPU, half/bf16 average pooling (resblock_updown downsampling) runs in fp32, as CPU lacks the kernel.
- Gradient checkpointing flags are accepted and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DenseUNet", "dense_unet_args", "timestep_embedding"]


# -- small pieces ------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """Group norm evaluated in fp32 whatever the input dtype; the result is cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def _norm(channels: int, eps: float = 1e-5) -> GroupNorm32:
    # XCube: 32 groups everywhere; 1e-5 in ResBlocks/output, 1e-6 in the spatial transformer.
    return GroupNorm32(32, channels, eps=eps)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) fp32 embedding: [cos(t * f_i), sin(t * f_i)], f_i = P^(-i / half)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Downsample(nn.Module):
    """x2 downsampling: a stride-2 3^3 conv (`op`) or, without a conv, 2^3 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv3d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("pooling downsample cannot change the channel count")
            self.op = nn.AvgPool3d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.op, nn.AvgPool3d) and x.device.type == "cpu" and x.dtype != torch.float32:
            # CPU has no half/bf16 avg_pool3d kernel; pool in fp32 and cast back.
            return self.op(x.float()).to(x.dtype)
        return self.op(x)


class Upsample(nn.Module):
    """x2 nearest-neighbour upsampling of all three spatial axes, optionally followed by a 3^3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv3d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class TimestepBlock(nn.Module):
    """Marker for modules whose forward takes the timestep embedding."""


class ResBlock(TimestepBlock):
    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv3d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv3d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv3d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv3d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)
        e = e.reshape(*e.shape, *([1] * (h.dim() - e.dim())))
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


# -- attention -----------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of `x` onto `context` (onto `x` itself when context is None)."""

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout=0.0
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context.to(x.dtype)
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        attn_mask = None
        if mask is not None:
            # (B, S) boolean key mask, True = attend; broadcast over heads and queries.
            attn_mask = mask.reshape(mask.shape[0], -1).to(torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU (4x inner width) -> dropout -> Linear, keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim=None):
        super().__init__()
        # Registration order (attn1, ff, attn2, norms) follows the published key order.
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(
            dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context=None, mask=None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        # XCube hands the key mask to the cross-attention only.
        x = x + self.attn2(self.norm2(x), context=context, mask=mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the flattened voxels of a (B, C, D, H, W) volume."""

    def __init__(
        self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout=0.0, context_dim=None
    ):
        super().__init__()
        inner = n_heads * d_head
        self.in_channels = in_channels
        self.norm = _norm(in_channels, eps=1e-6)
        self.proj_in = nn.Conv3d(in_channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner, n_heads, d_head, dropout=dropout, context_dim=context_dim)
                for _ in range(depth)
            ]
        )
        self.proj_out = _zeroed(nn.Conv3d(inner, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor, context=None, mask=None) -> torch.Tensor:
        b, _, d, h, w = x.shape
        tokens = self.proj_in(self.norm(x))
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, D*H*W, inner), voxel order d-major
        for block in self.transformer_blocks:
            tokens = block(tokens, context=context, mask=mask)
        tokens = tokens.transpose(1, 2).reshape(b, -1, d, h, w)
        return self.proj_out(tokens) + x


class AttentionBlock(nn.Module):
    """openai-style self-attention over all voxels (used when there is no spatial transformer)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if self.num_heads <= 0 or channels % self.num_heads:
            raise ValueError(f"channels {channels} cannot be split into {self.num_heads} heads")
        self.channels = channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        # Split into q, k, v first, then into heads (XCube's QKVAttention order).
        q, k, v = (t.reshape(b, self.num_heads, -1, t.shape[-1]).transpose(2, 3) for t in qkv.chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d)
        out = out.transpose(2, 3).reshape(b, c, -1)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that routes the embedding to ResBlocks and the context/mask to transformers."""

    def forward(self, x, emb, context=None, mask=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, mask=mask)
            else:
                x = layer(x)
        return x


# -- the UNet ----------------------------------------------------------------------------------------


def _attention_layer(
    ch: int,
    *,
    num_heads: int,
    num_head_channels: int,
    legacy: bool,
    use_spatial_transformer: bool,
    transformer_depth: int,
    context_dim: int | None,
    attn_block_heads: int,
) -> tuple[nn.Module, int]:
    """Build the attention layer of one UNet stage, resolving heads exactly as XCube's constructor.

    Returns the layer and the (possibly updated) `num_heads`, because upstream reassigns its loop
    variable when `num_head_channels` is set.
    """
    if num_head_channels == -1:
        dim_head = ch // num_heads
    else:
        num_heads = ch // num_head_channels
        dim_head = num_head_channels
    if legacy:
        dim_head = ch // num_heads if use_spatial_transformer else num_head_channels
    if use_spatial_transformer:
        if num_heads <= 0 or dim_head <= 0:
            raise ValueError(f"cannot split {ch} channels into {num_heads} heads")
        layer: nn.Module = SpatialTransformer(
            ch, num_heads, dim_head, depth=transformer_depth, context_dim=context_dim
        )
    else:
        layer = AttentionBlock(ch, num_heads=attn_block_heads, num_head_channels=dim_head)
    return layer, num_heads


class DenseUNet(nn.Module):
    """XCube's `UNetModel` (dense, dims=3); same constructor arguments and parameter names.

    forward(x (B, C, D, H, W), timesteps (B,) or scalar, context (B, S, context_dim) | None,
    context_mask (B, S) bool | None (True = attend), y (B, num_classes) | None) -> (B, out, D, H, W).
    """

    def __init__(
        self,
        image_size: Any = None,
        num_input_channels: int | None = None,
        model_channels: int | None = None,
        num_res_blocks: int | None = None,
        attention_resolutions: Sequence[int] = (),
        out_channels: int | None = None,
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        **ignored: Any,
    ):
        super().__init__()
        if num_input_channels is None or model_channels is None or num_res_blocks is None:
            raise TypeError("num_input_channels, model_channels and num_res_blocks are required")
        if dims != 3:
            raise ValueError(f"DenseUNet implements XCube's 3-D UNet only (dims=3), got dims={dims}")
        if use_fp16:
            raise ValueError("use_fp16=True is not supported; cast the module instead (e.g. .half())")
        if use_spatial_transformer and context_dim is None:
            raise ValueError("use_spatial_transformer=True needs context_dim")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError("context_dim is set but use_spatial_transformer is False")
        if context_dim is not None and not isinstance(context_dim, int):
            if isinstance(context_dim, Sequence) and len(context_dim) == 1:
                context_dim = int(context_dim[0])
            else:
                raise ValueError(f"per-depth context_dim lists are not supported: {context_dim!r}")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels has to be set")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = [int(r) for r in attention_resolutions]
        channel_mult = [int(m) for m in channel_mult]

        self.ignored_kwargs = dict(ignored)
        self.image_size = image_size
        self.in_channels = self.num_input_channels = int(num_input_channels)
        self.model_channels = int(model_channels)
        self.out_channels = int(out_channels) if out_channels is not None else self.in_channels
        self.num_res_blocks = int(num_res_blocks)
        self.attention_resolutions = attention_resolutions
        self.channel_mult = channel_mult
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.use_spatial_transformer = use_spatial_transformer
        self.predict_codebook_ids = n_embed is not None

        attn_kw = dict(
            legacy=legacy,
            use_spatial_transformer=use_spatial_transformer,
            transformer_depth=transformer_depth,
            context_dim=context_dim,
        )
        mc = self.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            # XCube's class conditioning is a Linear over a (B, num_classes) vector, not an Embedding.
            self.label_emb = nn.Linear(num_classes, emb_dim)

        def res(ch_in: int, ch_out: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in, emb_dim, dropout, out_channels=ch_out, use_scale_shift_norm=use_scale_shift_norm, **kw
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv3d(self.in_channels, mc, 3, padding=1))]
        )
        skip_chans = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(self.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attention_resolutions:
                    layer, num_heads = _attention_layer(
                        ch,
                        num_heads=num_heads,
                        num_head_channels=num_head_channels,
                        attn_block_heads=num_heads,
                        **attn_kw,
                    )
                    layers.append(layer)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        mid_attn, num_heads = _attention_layer(
            ch,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            attn_block_heads=num_heads,
            **attn_kw,
        )
        self.middle_block = TimestepEmbedSequential(res(ch), mid_attn, res(ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(self.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in attention_resolutions:
                    layer, num_heads = _attention_layer(
                        ch,
                        num_heads=num_heads,
                        num_head_channels=num_head_channels,
                        attn_block_heads=num_heads_upsample,
                        **attn_kw,
                    )
                    layers.append(layer)
                if level and i == self.num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), _zeroed(nn.Conv3d(mc, self.out_channels, 3, padding=1))
        )
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(_norm(ch), nn.Conv3d(mc, int(n_embed), 1))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("y must be given if and only if the model is class-conditional")
        if context_mask is not None and context is None:
            raise ValueError("context_mask given without context")
        if self.use_spatial_transformer and context is None:
            # Upstream would fall back to self-attention in attn2 and then fail on the context width.
            raise ValueError("this UNet cross-attends to a context; pass context")
        b = x.shape[0]
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(b)
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))

        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context, mask=context_mask)
            skips.append(h)
        h = self.middle_block(h, emb, context, mask=context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, mask=context_mask)
        h = self.id_predictor(h) if self.predict_codebook_ids else self.out(h)
        return h.to(x.dtype)


# -- config -> constructor arguments -------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain (resolved) python containers; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a project dependency
        return obj
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


# Output width of XCube's 5-frequency NeRF positional embedder on xyz (include_input): 3 + 3*2*5.
_POS_EMBED_HIGH_CH = 33


def vae_latent_channels(vae_config: Mapping[str, Any]) -> int:
    """Latent width of an XCube VAE: f_maps * 2^(num_blocks - 1) / cut_ratio (8 for both objaverse VAEs)."""
    cfg = _plain(vae_config)
    params = cfg["network"]["unet"]["params"]
    num_blocks = params.get("num_blocks", cfg.get("tree_depth"))
    return int(params["f_maps"] * 2 ** (int(num_blocks) - 1) / cfg["cut_ratio"])


def unet_args(
    config: Mapping[str, Any],
    diffuser: str,
    *,
    latent_channels: int | None = None,
    vae_config: Mapping | None = None,
) -> dict[str, Any]:
    """Constructor arguments of an XCube diffusion UNet from a merged diffusion config.

    Mirrors `xcube.models.diffusion.Model.__init__`: the latent width comes from the VAE (pass
    `vae_config` or `latent_channels`; default 8, the width of XCube's objaverse VAEs), the
    conditioning key decides extra input channels / class embedding / cross-attention, and
    positional-embedding flags add 3 (raw ijk or world xyz) or 33 (NeRF embedding) input channels.
    """
    cfg = _plain(config)
    network = cfg.get("network", {})
    name = network.get("diffuser_name", "UNetModel_Dense")
    if name != diffuser:
        raise ValueError(f"this builds {diffuser}, the config names {name!r}")
    if latent_channels is None:
        latent_channels = vae_latent_channels(vae_config) if vae_config is not None else 8
    in_ch = out_ch = int(latent_channels)
    num_classes = None
    use_st = False
    context_dim = None
    key = cfg.get("conditioning_key", "none")
    if key == "concat":
        in_ch += cfg["num_classes"]
    elif key == "adm":
        num_classes = cfg["num_classes"]
    elif key == "none":
        pass
    elif key == "crossattn":
        use_st, context_dim = True, cfg["context_dim"]
    elif key == "c_crossattn":
        use_st, context_dim = True, cfg["context_dim"]
        in_ch += cfg["num_classes"]
    elif key == "c_adm":
        in_ch += cfg["concat_dim"]
        num_classes = cfg["num_classes"]
    else:
        raise ValueError(f"unknown conditioning_key {key!r}")
    # Same precedence as upstream's if/elif chain.
    for flag, extra in (
        ("use_pos_embed", 3),
        ("use_pos_embed_high", _POS_EMBED_HIGH_CH),
        ("use_pos_embed_world", 3),
        ("use_pos_embed_world_high", _POS_EMBED_HIGH_CH),
    ):
        if cfg.get(flag, False):
            in_ch += extra
            break
    args: dict[str, Any] = dict(network.get("diffuser", {}))
    args.update(
        num_input_channels=in_ch,
        out_channels=out_ch,
        num_classes=num_classes,
        use_spatial_transformer=use_st,
        context_dim=context_dim,
    )
    return args


def dense_unet_args(
    config: Mapping[str, Any], *, latent_channels: int | None = None, vae_config: Mapping | None = None
) -> dict[str, Any]:
    """The coarse (dense) UNet's constructor arguments; see `unet_args`."""
    return unet_args(config, "UNetModel_Dense", latent_channels=latent_channels, vae_config=vae_config)
