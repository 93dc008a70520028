"""TRELLIS's networks, written for threegen in plain torch, with the published parameter names.

Architecture facts come from microsoft/TRELLIS (MIT). Class names, constructor arguments and
state-dict keys match the published checkpoints (`ckpts/<stem>.json` names the class and its
args; `<stem>.safetensors` holds the weights), so `load_state_dict(strict=True)` takes them
as they are. Sparse parts run on services/recon/sparse.py instead of spconv/flash-attn.

Numerics follow upstream: fp32 layer norms, tanh-GELU MLPs, adaLN modulation, RMS-normalised
queries/keys, TRELLIS's mean-pool (sum / (n + 1)) downsampling. One difference: a model runs in
one dtype (fp16 on a GPU), where upstream keeps embedders and output layers in fp32.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from services.recon import sparse as sp

# -- shared pieces ----------------------------------------------------------------------


class LayerNorm32(nn.LayerNorm):
    """Layer norm computed in fp32 whatever the model's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """Layer norm over the channel axis of (B, C, ...) tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.dim()
        x = x.permute(0, *range(2, dims), 1)
        x = super().forward(x)
        return x.permute(0, dims - 1, *range(1, dims - 1)).contiguous()


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(embedding.to(self.mlp[0].weight.dtype))


def absolute_position_embedding(coords: torch.Tensor, channels: int) -> torch.Tensor:
    """Sin/cos features per coordinate: [sin x, cos x, sin y, cos y, sin z, cos z], zero-padded."""
    freq_dim = channels // coords.shape[1] // 2
    freqs = 1.0 / (10000 ** (torch.arange(freq_dim, dtype=torch.float32, device=coords.device) / freq_dim))
    out = torch.outer(coords.reshape(-1).float(), freqs)
    embed = torch.cat([torch.sin(out), torch.cos(out)], dim=-1).reshape(coords.shape[0], -1)
    if embed.shape[1] < channels:
        embed = F.pad(embed, (0, channels - embed.shape[1]))
    return embed


class MultiHeadRMSNorm(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale).to(x.dtype)


class FeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels)
        )

    def forward(self, x):
        if isinstance(x, sp.SparseTensor):
            return x.replace(self.mlp(x.feats))
        return self.mlp(x)


class Attention(nn.Module):
    """Multi-head attention with TRELLIS's projections; dense (B, L, C) or sparse voxels.

    Sparse self-attention is 'full' (over each sample's voxels) or 'windowed' (Swin windows of
    `window` voxels per side, shifted by `shift`)."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        kind: str = "self",
        qk_rms_norm: bool = False,
        qkv_bias: bool = True,
        window: int | None = None,
        shift: int = 0,
    ):
        super().__init__()
        self.num_heads, self.kind, self.window, self.shift = num_heads, kind, window, shift
        self.qk_rms_norm = qk_rms_norm
        if kind == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(ctx_channels or channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def _norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.qk_rms_norm:
            return self.q_rms_norm(q), self.k_rms_norm(k)
        return q, k

    def forward(self, x, context: torch.Tensor | None = None):
        heads = self.num_heads
        if isinstance(x, sp.SparseTensor):
            feats = x.feats
            if self.kind == "self":
                q, k, v = self.to_qkv(feats).view(feats.shape[0], 3, heads, -1).unbind(dim=1)
                q, k = self._norm(q, k)
                if self.window:
                    h = sp.windowed_attention(x, q, k, v, self.window, self.shift)
                else:
                    h = sp.full_attention(x, q, k, v)
            else:
                q = self.to_q(feats).view(feats.shape[0], heads, -1)
                k, v = self.to_kv(context).view(*context.shape[:2], 2, heads, -1).unbind(dim=2)
                q, k = self._norm(q, k)
                h = sp.cross_attention(x, q, k, v)
            return x.replace(self.to_out(h.reshape(feats.shape[0], -1)))
        batch, length, _ = x.shape
        if self.kind == "self":
            q, k, v = self.to_qkv(x).view(batch, length, 3, heads, -1).unbind(dim=2)
        else:
            q = self.to_q(x).view(batch, length, heads, -1)
            k, v = self.to_kv(context).view(batch, context.shape[1], 2, heads, -1).unbind(dim=2)
        q, k = self._norm(q, k)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(h.transpose(1, 2).reshape(batch, length, -1))


def _modulate(x, shift: torch.Tensor, scale: torch.Tensor):
    if isinstance(x, sp.SparseTensor):
        return x.replace(x.feats * (1 + x.per_sample(scale)) + x.per_sample(shift))
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _gate(x, gate: torch.Tensor):
    if isinstance(x, sp.SparseTensor):
        return x.feats * x.per_sample(gate)
    return x * gate.unsqueeze(1)


def _norm(norm: nn.Module, x):
    return x.replace(norm(x.feats)) if isinstance(x, sp.SparseTensor) else norm(x)


def _add(x, h):
    if isinstance(x, sp.SparseTensor):
        return x.replace(x.feats + (h.feats if isinstance(h, sp.SparseTensor) else h))
    return x + h


class ModulatedCrossBlock(nn.Module):
    """Self-attention, cross-attention to the condition, MLP; adaLN-modulated by the timestep."""

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(channels, num_heads, qk_rms_norm=qk_rms_norm)
        self.cross_attn = Attention(
            channels, num_heads, ctx_channels, kind="cross", qk_rms_norm=qk_rms_norm_cross
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, x, mod: torch.Tensor, context: torch.Tensor):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(mod).chunk(
            6, dim=1
        )
        h = self.self_attn(_modulate(_norm(self.norm1, x), shift_msa, scale_msa))
        x = _add(x, _gate(h, gate_msa))
        x = _add(x, self.cross_attn(_norm(self.norm2, x), context))
        h = self.mlp(_modulate(_norm(self.norm3, x), shift_mlp, scale_mlp))
        return _add(x, _gate(h, gate_mlp))


# -- sparse structure: dense flow model and decoder ----------------------------------------


class SparseStructureFlowModel(nn.Module):
    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        pe_mode: str = "ape",
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        **_unused,
    ):
        super().__init__()
        if pe_mode != "ape":
            raise ValueError(f"pe_mode {pe_mode!r} is not supported (the published models use 'ape')")
        self.resolution, self.in_channels, self.patch_size = resolution, in_channels, patch_size
        self.out_channels = out_channels
        heads = num_heads or model_channels // num_head_channels
        self.t_embedder = TimestepEmbedder(model_channels)
        grid = resolution // patch_size
        axes = torch.meshgrid(*[torch.arange(grid)] * 3, indexing="ij")
        self.register_buffer(
            "pos_emb", absolute_position_embedding(torch.stack(axes, -1).reshape(-1, 3), model_channels)
        )
        self.input_layer = nn.Linear(in_channels * patch_size**3, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedCrossBlock(
                model_channels, cond_channels, heads, mlp_ratio, qk_rms_norm, qk_rms_norm_cross
            )
            for _ in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        p, grid = self.patch_size, self.resolution // self.patch_size
        batch = x.shape[0]
        h = x.reshape(batch, self.in_channels, grid, p, grid, p, grid, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
        h = h.reshape(batch, self.in_channels * p**3, grid**3).transpose(1, 2)
        h = h.to(self.input_layer.weight.dtype)
        h = self.input_layer(h) + self.pos_emb[None].to(h.dtype)
        t_emb = self.t_embedder(t).to(h.dtype)
        cond = cond.to(h.dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond)
        h = self.out_layer(F.layer_norm(h, h.shape[-1:]))
        h = h.transpose(1, 2).reshape(batch, self.out_channels, p, p, p, grid, grid, grid)
        h = h.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(batch, self.out_channels, *[grid * p] * 3)
        return h


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = (
            nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class UpsampleBlock3d(nn.Module):
    """Conv to 8x channels, then a 3D pixel shuffle (x2 per axis)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        b, c, h, w, d = x.shape
        x = x.reshape(b, c // 8, 2, 2, 2, h, w, d).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, c // 8, h * 2, w * 2, d * 2)


class SparseStructureDecoder(nn.Module):
    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: str = "layer",
        **_unused,
    ):
        super().__init__()
        if norm_type != "layer":
            raise ValueError(f"norm_type {norm_type!r} is not supported (the published decoder uses 'layer')")
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)])
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle_block(self.input_layer(x))
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h)


# -- structured latents: sparse flow model and decoders -----------------------------------


class SparseResBlock3d(nn.Module):
    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        downsample: bool = False,
        upsample: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.downsample, self.upsample = downsample, upsample
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = sp.SparseConv3d(channels, out_channels, 3)
        self.conv2 = sp.SparseConv3d(out_channels, out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.skip_connection = (
            sp.SparseLinear(channels, out_channels) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: sp.SparseTensor, emb: torch.Tensor) -> sp.SparseTensor:
        scale, shift = self.emb_layers(emb).to(x.dtype).chunk(2, dim=1)
        if self.downsample:
            x = sp.downsample(x)
        elif self.upsample:
            x = sp.upsample(x)
        h = self.conv1(x.replace(F.silu(self.norm1(x.feats))))
        h = h.replace(self.norm2(h.feats) * (1 + h.per_sample(scale)) + h.per_sample(shift))
        h = self.conv2(h.replace(F.silu(h.feats)))
        skip = self.skip_connection(x)
        return h.replace(h.feats + skip.feats)


class SLatFlowModel(nn.Module):
    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        num_io_res_blocks: int = 2,
        io_block_channels: list[int] | None = None,
        pe_mode: str = "ape",
        use_skip_connection: bool = True,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        **_unused,
    ):
        super().__init__()
        if pe_mode != "ape" or not io_block_channels or not use_skip_connection:
            raise ValueError("only the published SLat flow layout is supported (ape, io blocks, skips)")
        if 2 ** len(io_block_channels) != patch_size:
            raise ValueError("patch_size must be 2 ** len(io_block_channels)")
        self.resolution, self.in_channels, self.model_channels = resolution, in_channels, model_channels
        heads = num_heads or model_channels // num_head_channels
        self.t_embedder = TimestepEmbedder(model_channels)
        self.input_layer = sp.SparseLinear(in_channels, io_block_channels[0])
        self.input_blocks = nn.ModuleList()
        for chs, next_chs in zip(io_block_channels, [*io_block_channels[1:], model_channels], strict=True):
            self.input_blocks.extend(
                SparseResBlock3d(chs, model_channels, chs) for _ in range(num_io_res_blocks - 1)
            )
            self.input_blocks.append(SparseResBlock3d(chs, model_channels, next_chs, downsample=True))
        self.blocks = nn.ModuleList(
            ModulatedCrossBlock(
                model_channels, cond_channels, heads, mlp_ratio, qk_rms_norm, qk_rms_norm_cross
            )
            for _ in range(num_blocks)
        )
        self.out_blocks = nn.ModuleList()
        for chs, prev_chs in zip(
            reversed(io_block_channels), [model_channels, *reversed(io_block_channels[1:])], strict=True
        ):
            self.out_blocks.append(SparseResBlock3d(prev_chs * 2, model_channels, chs, upsample=True))
            self.out_blocks.extend(
                SparseResBlock3d(chs * 2, model_channels, chs) for _ in range(num_io_res_blocks - 1)
            )
        self.out_layer = sp.SparseLinear(io_block_channels[0], out_channels)

    def forward(self, x: sp.SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> sp.SparseTensor:
        dtype = self.input_layer.weight.dtype
        h = self.input_layer(x.replace(x.feats.to(dtype)))
        t_emb = self.t_embedder(t).to(dtype)
        cond = cond.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        h = h.replace(h.feats + absolute_position_embedding(h.coords[:, 1:], self.model_channels).to(dtype))
        for block in self.blocks:
            h = block(h, t_emb, cond)
        for block, skip in zip(self.out_blocks, reversed(skips), strict=True):
            h = block(h.replace(torch.cat([h.feats, skip], dim=1)), t_emb)
        h = h.replace(F.layer_norm(h.feats.float(), h.feats.shape[-1:]).to(dtype))
        out = self.out_layer(h)
        return out.replace(out.feats.to(x.dtype))


class SparseTransformerBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float,
        window: int | None,
        shift: int,
        qk_rms_norm: bool,
    ):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(channels, num_heads, qk_rms_norm=qk_rms_norm, window=window, shift=shift)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        x = _add(x, self.attn(_norm(self.norm1, x)))
        return _add(x, self.mlp(_norm(self.norm2, x)))


class SparseTransformerBase(nn.Module):
    """Input projection, position embedding and transformer blocks shared by the SLat decoders."""

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4.0,
        attn_mode: str = "swin",
        window_size: int | None = 8,
        pe_mode: str = "ape",
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        if attn_mode not in ("swin", "full") or pe_mode != "ape":
            raise ValueError(
                f"attn_mode {attn_mode!r} / pe_mode {pe_mode!r}: only swin/full with ape are supported"
            )
        self.model_channels = model_channels
        heads = num_heads or model_channels // num_head_channels
        self.input_layer = sp.SparseLinear(in_channels, model_channels)
        self.blocks = nn.ModuleList(
            SparseTransformerBlock(
                model_channels,
                heads,
                mlp_ratio,
                window_size if attn_mode == "swin" else None,
                (window_size // 2) * (i % 2) if attn_mode == "swin" else 0,
                qk_rms_norm,
            )
            for i in range(num_blocks)
        )

    def trunk(self, x: sp.SparseTensor) -> sp.SparseTensor:
        dtype = self.input_layer.weight.dtype
        h = self.input_layer(x.replace(x.feats.to(dtype)))
        h = h.replace(h.feats + absolute_position_embedding(x.coords[:, 1:], self.model_channels).to(dtype))
        for block in self.blocks:
            h = block(h)
        return h


def hammersley(count: int, dims: int = 3) -> np.ndarray:
    """Points of the Hammersley set in [0, 1)^dims: i/n, then radical inverses in bases 2, 3, ..."""
    primes = [2, 3, 5, 7, 11, 13][: dims - 1]
    points = np.zeros((count, dims))
    for i in range(count):
        points[i, 0] = i / count
        for d, base in enumerate(primes, start=1):
            value, fraction, n = 0.0, 1.0 / base, i
            while n:
                value += (n % base) * fraction
                n //= base
                fraction /= base
            points[i, d] = value
    return points


class SLatGaussianDecoder(SparseTransformerBase):
    FIELDS = (("_xyz", 3), ("_features_dc", 3), ("_scaling", 3), ("_rotation", 4), ("_opacity", 1))

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 representation_config: dict, **kwargs):  # fmt: skip
        kwargs = {k: v for k, v in kwargs.items() if k not in ("use_fp16", "use_checkpoint")}
        super().__init__(latent_channels, model_channels, num_blocks, **kwargs)
        self.resolution, self.rep_config = resolution, representation_config
        count = representation_config["num_gaussians"]
        self.out_layer = sp.SparseLinear(model_channels, count * sum(size for _, size in self.FIELDS))
        perturbation = (torch.tensor(hammersley(count)).float() * 2 - 1) / representation_config["voxel_size"]
        self.register_buffer("offset_perturbation", torch.atanh(perturbation.clamp(-0.999, 0.999)))

    def forward(self, x: sp.SparseTensor) -> list[dict[str, torch.Tensor]]:
        """Per sample: the Gaussians' raw parameters (before TRELLIS's activations) as a dict."""
        h = self.trunk(x)
        h = h.replace(F.layer_norm(h.feats.float(), h.feats.shape[-1:]).to(h.dtype))
        out = self.out_layer(h)
        config, count = self.rep_config, self.rep_config["num_gaussians"]
        result = []
        for rows in out.layout():
            feats = out.feats[rows].float()
            centres = (out.coords[rows][:, 1:].float() + 0.5) / self.resolution
            start, params = 0, {}
            for name, size in self.FIELDS:
                part = feats[:, start : start + count * size].reshape(-1, count, size) * config["lr"][name]
                start += count * size
                if name == "_xyz":
                    if config.get("perturb_offset", False):
                        part = part + self.offset_perturbation.float()
                    offset = torch.tanh(part) / self.resolution * 0.5 * config["voxel_size"]
                    part = centres.unsqueeze(1) + offset
                params[name] = part.flatten(0, 1)
            result.append(params)
        return result


class SparseSubdivideBlock3d(nn.Module):
    def __init__(self, channels: int, resolution: int, out_channels: int | None = None, num_groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.act_layers = nn.Sequential(sp.SparseGroupNorm32(num_groups, channels), nn.SiLU())
        self.out_layers = nn.Sequential(
            sp.SparseConv3d(channels, out_channels, 3),
            sp.SparseGroupNorm32(num_groups, out_channels),
            nn.SiLU(),
            sp.SparseConv3d(out_channels, out_channels, 3),
        )
        self.skip_connection = (
            sp.SparseConv3d(channels, out_channels, 1) if out_channels != channels else nn.Identity()
        )

    @staticmethod
    def _run(layers: nn.Sequential, x: sp.SparseTensor) -> sp.SparseTensor:
        for layer in layers:
            x = x.replace(layer(x.feats)) if isinstance(layer, nn.SiLU) else layer(x)
        return x

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        h = sp.subdivide(self._run(self.act_layers, x))
        x = sp.subdivide(x)
        x.spatial = h.spatial  # same coordinates: share the finer grid's neighbour maps
        h = self._run(self.out_layers, h)
        skip = self.skip_connection(x)
        return h.replace(h.feats + skip.feats)


class SLatMeshDecoder(SparseTransformerBase):
    """Features for FlexiCubes at 4x the latent resolution: per fine voxel 8 corner SDFs, 8x3
    deformations, 21 weights and (with colour) 8x6 colour/normal values."""

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 representation_config: dict, **kwargs):  # fmt: skip
        kwargs = {k: v for k, v in kwargs.items() if k not in ("use_fp16", "use_checkpoint")}
        super().__init__(latent_channels, model_channels, num_blocks, **kwargs)
        self.resolution = resolution
        self.use_color = bool(representation_config.get("use_color", False))
        self.out_channels = 8 + 24 + 21 + (48 if self.use_color else 0)
        self.upsample = nn.ModuleList(
            [
                SparseSubdivideBlock3d(model_channels, resolution, model_channels // 4),
                SparseSubdivideBlock3d(model_channels // 4, resolution * 2, model_channels // 8),
            ]
        )
        self.out_layer = sp.SparseLinear(model_channels // 8, self.out_channels)

    def forward(self, x: sp.SparseTensor) -> sp.SparseTensor:
        h = self.trunk(x)
        for block in self.upsample:
            h = block(h)
        out = self.out_layer(h)
        return out.replace(out.feats.float())


CLASSES = {
    cls.__name__: cls
    for cls in (
        SparseStructureFlowModel,
        SparseStructureDecoder,
        SLatFlowModel,
        SLatGaussianDecoder,
        SLatMeshDecoder,
    )
}
