"""SAM 3D Objects' stage-1 network: a mixture-of-transformers flow over shape and pose latents.

Architecture facts come from facebookresearch/sam-3d-objects (SAM License; read, not copied).
The sparse-structure generator denoises five latents at once: the 16^3 x 8 shape latent (4096
tokens) and four one-token pose latents (6D rotation, scale, translation, translation scale).
They run as two streams ("shape" and the merged pose stream) with their own norms, projections,
cross-attention and MLPs, sharing only the timestep modulation. The shape stream attends to
itself alone; the pose stream attends to its own tokens and the shape tokens. State-dict keys
match the published `ss_generator.ckpt` (prefix `_base_models.generator.reverse_fn.backbone.`
stripped), so `load_state_dict(strict=True)` takes it.

Stage 2 (SLat flow) and the decoders are TRELLIS's networks with the same keys and are built
from services/recon/families/trellis/networks.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from services.recon.families.trellis.networks import (
    FeedForwardNet,
    LayerNorm32,
    MultiHeadRMSNorm,
    TimestepEmbedder,
    absolute_position_embedding,
)

SHAPE = "shape"


class Latent(nn.Module):
    """Projection of one latent into the transformer's width and back, with its position embedding.

    The shape latent's embedding is the fixed sin/cos one of its 16^3 grid (a buffer, saved in
    the checkpoint); the pose latents learn one token each."""

    def __init__(self, in_channels: int, model_channels: int, tokens: int, grid: int | None = None):
        super().__init__()
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.out_layer = nn.Linear(model_channels, in_channels)
        if grid is None:
            self.pos_emb = nn.Parameter(torch.zeros(tokens, model_channels))
        else:
            axes = torch.meshgrid(*[torch.arange(grid)] * 3, indexing="ij")
            coords = torch.stack(axes, -1).reshape(-1, 3)
            self.register_buffer("pos_emb", absolute_position_embedding(coords, model_channels))

    @property
    def tokens(self) -> int:
        return self.pos_emb.shape[0]

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_layer(x) + self.pos_emb[None].to(x.dtype)

    def to_output(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.layer_norm(h, h.shape[-1:]))


def _streams(module_factory, names: list[str]) -> nn.ModuleDict:
    return nn.ModuleDict({name: module_factory() for name in names})


class StreamSelfAttention(nn.Module):
    """Self-attention with per-stream projections: the shape stream sees only itself, every
    other stream sees the other streams and the shape tokens (keys and values)."""

    def __init__(self, channels: int, num_heads: int, names: list[str], qk_rms_norm: bool):
        super().__init__()
        self.num_heads, self.names, self.qk_rms_norm = num_heads, names, qk_rms_norm
        self.to_qkv = _streams(lambda: nn.Linear(channels, channels * 3), names)
        if qk_rms_norm:
            head_dim = channels // num_heads
            self.q_rms_norm = _streams(lambda: MultiHeadRMSNorm(head_dim, num_heads), names)
            self.k_rms_norm = _streams(lambda: MultiHeadRMSNorm(head_dim, num_heads), names)
        self.to_out = _streams(lambda: nn.Linear(channels, channels), names)

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return h.transpose(1, 2)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        q, k, v = {}, {}, {}
        for name, h in x.items():
            batch, length, _ = h.shape
            q[name], k[name], v[name] = (
                self.to_qkv[name](h).view(batch, length, 3, self.num_heads, -1).unbind(2)
            )
            if self.qk_rms_norm:
                q[name], k[name] = self.q_rms_norm[name](q[name]), self.k_rms_norm[name](k[name])
        out = {SHAPE: self._sdpa(q[SHAPE], k[SHAPE], v[SHAPE])}
        others = [name for name in x if name != SHAPE]
        if others:
            keys = torch.cat([k[name] for name in others] + [k[SHAPE]], dim=1)
            values = torch.cat([v[name] for name in others] + [v[SHAPE]], dim=1)
            joint = self._sdpa(torch.cat([q[name] for name in others], dim=1), keys, values)
            start = 0
            for name in others:
                out[name] = joint[:, start : start + q[name].shape[1]]
                start += q[name].shape[1]
        return {name: self.to_out[name](out[name].flatten(2)) for name in x}


class StreamCrossAttention(nn.Module):
    """Cross-attention to the condition tokens, one set of projections per stream."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(ctx_channels, channels * 2)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.to_q(x).view(batch, length, self.num_heads, -1)
        k, v = self.to_kv(context).view(batch, context.shape[1], 2, self.num_heads, -1).unbind(2)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(h.transpose(1, 2).reshape(batch, length, -1))


class StreamCrossBlock(nn.Module):
    """Self-attention, cross-attention and MLP per stream, adaLN-modulated by one shared map."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float,
                 names: list[str], qk_rms_norm: bool):  # fmt: skip
        super().__init__()
        self.norm1 = _streams(lambda: LayerNorm32(channels, elementwise_affine=False, eps=1e-6), names)
        self.norm2 = _streams(lambda: LayerNorm32(channels, elementwise_affine=True, eps=1e-6), names)
        self.norm3 = _streams(lambda: LayerNorm32(channels, elementwise_affine=False, eps=1e-6), names)
        self.self_attn = StreamSelfAttention(channels, num_heads, names, qk_rms_norm)
        self.cross_attn = _streams(lambda: StreamCrossAttention(channels, ctx_channels, num_heads), names)
        self.mlp = _streams(lambda: FeedForwardNet(channels, mlp_ratio), names)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, x: dict[str, torch.Tensor], mod: torch.Tensor, context: torch.Tensor):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            m.unsqueeze(1) for m in self.adaLN_modulation(mod).chunk(6, dim=1)
        )
        h = {n: self.norm1[n](t) * (1 + scale_msa) + shift_msa for n, t in x.items()}
        h = self.self_attn(h)
        x = {n: t + h[n] * gate_msa for n, t in x.items()}
        x = {n: t + self.cross_attn[n](self.norm2[n](t), context) for n, t in x.items()}
        h = {n: self.mlp[n](self.norm3[n](t) * (1 + scale_mlp) + shift_mlp) for n, t in x.items()}
        return {n: t + h[n] * gate_mlp for n, t in x.items()}


class ShapePoseFlowModel(nn.Module):
    """The stage-1 velocity network (upstream: SparseStructureFlowTdfyWrapper, a ShortCut model).

    `latents` maps each latent name to (in_channels, tokens, grid or None); `merged` maps a
    stream name to the latents concatenated into it (upstream's latent_share_transformer)."""

    def __init__(
        self,
        latents: dict[str, tuple[int, int, int | None]],
        merged: dict[str, list[str]],
        model_channels: int,
        cond_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int = 64,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        is_shortcut_model: bool = False,
        pe_mode: str = "ape",
        share_mod: bool = False,
        qk_rms_norm_cross: bool = False,
        **_unused,
    ):
        super().__init__()
        if pe_mode != "ape" or share_mod or qk_rms_norm_cross:
            raise ValueError("only the published stage-1 layout is supported (ape, per-block adaLN)")
        if SHAPE not in latents:
            raise ValueError("the stage-1 model needs a 'shape' latent")
        merged_names = {name for names in merged.values() for name in names}
        self.merged = merged
        self.streams = [name for name in latents if name not in merged_names] + list(merged)
        heads = num_heads or model_channels // num_head_channels
        if is_shortcut_model:
            self.d_embedder = TimestepEmbedder(model_channels)
        self.t_embedder = TimestepEmbedder(model_channels)
        self.blocks = nn.ModuleList(
            StreamCrossBlock(model_channels, cond_channels, heads, mlp_ratio, self.streams, qk_rms_norm)
            for _ in range(num_blocks)
        )
        self.latent_mapping = nn.ModuleDict(
            {name: Latent(ch, model_channels, tokens, grid) for name, (ch, tokens, grid) in latents.items()}
        )

    def latent_shapes(self) -> dict[str, tuple[int, int]]:
        return {name: (m.tokens, m.input_layer.in_features) for name, m in self.latent_mapping.items()}

    def forward(
        self,
        latents: dict[str, torch.Tensor],
        t: torch.Tensor,
        cond: torch.Tensor,
        d: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        dtype = self.blocks[0].adaLN_modulation[1].weight.dtype
        h = {name: self.latent_mapping[name].to_input(x.to(dtype)) for name, x in latents.items()}
        for stream, names in self.merged.items():
            h[stream] = torch.cat([h.pop(name) for name in names], dim=1)
        emb = self.t_embedder(t)
        if d is not None and hasattr(self, "d_embedder"):
            emb = emb + self.d_embedder(d)
        emb, cond = emb.to(dtype), cond.to(dtype)
        for block in self.blocks:
            h = block(h, emb, cond)
        for stream, names in self.merged.items():
            joined, start = h.pop(stream), 0
            for name in names:
                tokens = self.latent_mapping[name].tokens
                h[name] = joined[:, start : start + tokens]
                start += tokens
        return {name: self.latent_mapping[name].to_output(h[name]).float() for name in latents}


def build_shape_pose_flow(spec: dict) -> ShapePoseFlowModel:
    """The stage-1 network from its yaml node (`...reverse_fn.backbone` of ss_generator.yaml)."""
    latents = {}
    for name, entry in spec["latent_mapping"].items():
        embedder = entry["pos_embedder"]
        kind = embedder["_target_"].rsplit(".", 1)[-1]
        if kind == "ShapePositionEmbedder":
            grid = embedder["resolution"] // embedder["patch_size"]
            latents[name] = (entry["in_channels"], grid**3, grid)
        elif kind == "LearntPositionEmbedder":
            latents[name] = (entry["in_channels"], embedder["token_len"], None)
        else:
            raise ValueError(f"latent {name!r}: position embedder {kind!r} is not supported")
    args = {
        k: v for k, v in spec.items() if k not in ("_target_", "latent_mapping", "latent_share_transformer")
    }
    return ShapePoseFlowModel(latents, dict(spec.get("latent_share_transformer") or {}), **args)
