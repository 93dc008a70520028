"""The TripoSR network, with module names that match the published model.ckpt key for key.

image (B,3,H,W) -> DINO ViT tokens (B,1+P,D) -> learned triplane tokens refined by a
transformer that cross-attends to the image tokens -> upsampled triplanes (B,3,C,2S,2S)
-> an MLP decodes density and colour at any 3D point from the three plane features.

The ViT is our own (transformers 5 renamed ViT's modules; the checkpoint uses the 4.x
names), built from the DINO config that transformers parses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from services.recon.families.triposr.config import TripoSRConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- DINO ViT (image tokenizer) ---------------------------------------------------------


class ViTPatchEmbeddings(nn.Module):
    def __init__(self, hidden: int, patch: int, channels: int):
        super().__init__()
        self.projection = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    def __init__(self, hidden: int, patch: int, channels: int, image_size: int):
        super().__init__()
        self.patch_size = patch
        grid = image_size // patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid + 1, hidden))
        self.patch_embeddings = ViTPatchEmbeddings(hidden, patch, channels)

    def interpolated_positions(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings resized to the input's patch grid.

        Uses the same bicubic resize (scale factor (n+0.1)/n0) that the released model was
        trained with in transformers 4.35, so features match the original implementation.
        """
        pos = self.position_embeddings
        n0 = pos.shape[1] - 1
        side0 = int(math.sqrt(n0))
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows == side0 and cols == side0:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        patch_pos = patch_pos.reshape(1, side0, side0, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(),
            scale_factor=((rows + 0.1) / side0, (cols + 0.1) / side0),
            mode="bicubic",
            align_corners=False,
        ).to(pos.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        tokens = self.patch_embeddings(pixels)
        cls = self.cls_token.expand(batch, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        return tokens + self.interpolated_positions(height, width)


class ViTSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden, bias=qkv_bias)
        self.key = nn.Linear(hidden, hidden, bias=qkv_bias)
        self.value = nn.Linear(hidden, hidden, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, n, d)


class ViTSelfOutput(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ViTAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.attention = ViTSelfAttention(hidden, heads, qkv_bias)
        self.output = ViTSelfOutput(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class ViTIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class ViTOutput(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ViTLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, qkv_bias: bool):
        super().__init__()
        self.attention = ViTAttention(hidden, heads, qkv_bias)
        self.intermediate = ViTIntermediate(hidden, intermediate)
        self.output = ViTOutput(hidden, intermediate)
        self.layernorm_before = nn.LayerNorm(hidden, eps=eps)
        self.layernorm_after = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class ViTEncoder(nn.Module):
    def __init__(self, layers: int, **kwargs: object):
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(**kwargs) for _ in range(layers))  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class ViTPooler(nn.Module):
    """Present because the checkpoint holds its weights; its output is not used."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class DinoViT(nn.Module):
    def __init__(self, vit_config: object):
        super().__init__()
        c = vit_config
        hidden = c.hidden_size  # type: ignore[attr-defined]
        self.embeddings = ViTEmbeddings(hidden, c.patch_size, c.num_channels, c.image_size)  # type: ignore[attr-defined]
        self.encoder = ViTEncoder(
            c.num_hidden_layers,  # type: ignore[attr-defined]
            hidden=hidden,
            heads=c.num_attention_heads,  # type: ignore[attr-defined]
            intermediate=c.intermediate_size,  # type: ignore[attr-defined]
            eps=c.layer_norm_eps,  # type: ignore[attr-defined]
            qkv_bias=getattr(c, "qkv_bias", True),
        )
        self.layernorm = nn.LayerNorm(hidden, eps=c.layer_norm_eps)  # type: ignore[attr-defined]
        self.pooler = ViTPooler(hidden)
        if getattr(c, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"DINO config hidden_act {c.hidden_act!r} is not supported")  # type: ignore[attr-defined]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixels)))


class DINOSingleImageTokenizer(nn.Module):
    def __init__(self, vit_config: object):
        super().__init__()
        self.model = DinoViT(vit_config)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) in [0,1] -> tokens (B, 1+P, D), CLS first."""
        pixels = (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)
        return self.model(pixels)


# ---- triplane tokens and the transformer backbone ---------------------------------------


class Triplane1DTokenizer(nn.Module):
    def __init__(self, plane_size: int, num_channels: int):
        super().__init__()
        self.plane_size = plane_size
        self.num_channels = num_channels
        self.embeddings = nn.Parameter(
            torch.randn(3, num_channels, plane_size, plane_size) / math.sqrt(num_channels)
        )

    def forward(self, batch: int) -> torch.Tensor:
        """(B, C, 3*S*S): plane-major, then rows, then columns."""
        return (
            self.embeddings.unsqueeze(0)
            .expand(batch, -1, -1, -1, -1)
            .permute(0, 2, 1, 3, 4)
            .reshape(batch, self.num_channels, -1)
        )

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        s = self.plane_size
        return tokens.view(b, self.num_channels, 3, s, s).permute(0, 2, 1, 3, 4)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, bias: bool):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, head_dim: int, context_dim: int | None, bias: bool, affine: bool
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.attn1 = Attention(dim, heads, head_dim, None, bias)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, bias)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer1D(nn.Module):
    def __init__(self, cfg: object):
        super().__init__()
        c = cfg
        inner = c.num_attention_heads * c.attention_head_dim  # type: ignore[attr-defined]
        channels = c.in_channels  # type: ignore[attr-defined]
        self.norm = nn.GroupNorm(c.norm_num_groups, channels, eps=1e-6, affine=True)  # type: ignore[attr-defined]
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner,
                c.num_attention_heads,  # type: ignore[attr-defined]
                c.attention_head_dim,  # type: ignore[attr-defined]
                c.cross_attention_dim,  # type: ignore[attr-defined]
                c.attention_bias,  # type: ignore[attr-defined]
                c.norm_elementwise_affine,  # type: ignore[attr-defined]
            )
            for _ in range(c.num_layers)  # type: ignore[attr-defined]
        )
        self.proj_out = nn.Linear(inner, c.out_channels or channels)  # type: ignore[attr-defined]

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, on_block=None) -> torch.Tensor:
        """tokens (B, C, N), context (B, M, D) -> (B, C, N)."""
        residual = tokens
        h = self.norm(tokens).permute(0, 2, 1)
        h = self.proj_in(h)
        for index, block in enumerate(self.transformer_blocks):
            h = block(h, context)
            if on_block is not None:
                on_block(index + 1, len(self.transformer_blocks))
        h = self.proj_out(h).permute(0, 2, 1)
        return h + residual


class TriplaneUpsampleNetwork(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        b = planes.shape[0]
        out = self.upsample(planes.flatten(0, 1))
        return out.view(b, 3, *out.shape[1:])


class NeRFMLP(nn.Module):
    def __init__(self, in_channels: int, n_neurons: int, n_hidden_layers: int, activation: str, bias: bool):
        super().__init__()
        act = nn.SiLU if activation == "silu" else nn.ReLU
        layers: list[nn.Module] = [nn.Linear(in_channels, n_neurons, bias=bias), act()]
        for _ in range(n_hidden_layers - 1):
            layers += [nn.Linear(n_neurons, n_neurons, bias=bias), act()]
        layers.append(nn.Linear(n_neurons, 4, bias=bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (N, 4): raw density, then 3 raw colour features."""
        return self.layers(features)


# ---- the whole system -------------------------------------------------------------------


class TripoSR(nn.Module):
    def __init__(self, config: TripoSRConfig, vit_config: object):
        super().__init__()
        self.config = config
        self.image_tokenizer = DINOSingleImageTokenizer(vit_config)
        self.tokenizer = Triplane1DTokenizer(config.tokenizer.plane_size, config.tokenizer.num_channels)
        self.backbone = Transformer1D(config.backbone)
        self.post_processor = TriplaneUpsampleNetwork(
            config.post_processor.in_channels, config.post_processor.out_channels
        )
        d = config.decoder
        self.decoder = NeRFMLP(d.in_channels, d.n_neurons, d.n_hidden_layers, d.activation, d.bias)

    def scene_codes(
        self, images: torch.Tensor, on_block=None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (B,3,S,S) in [0,1], already at cond_image_size -> triplanes (B,3,C,H,W)."""
        if context is None:
            context = self.image_tokenizer(images)
        tokens = self.tokenizer(images.shape[0]).to(context.dtype)
        tokens = self.backbone(tokens, context, on_block=on_block)
        return self.post_processor(self.tokenizer.detokenize(tokens))

    def query_raw(self, triplane: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Decoder output (N,4) at world points (N,3) for one scene's triplane (3,C,H,W)."""
        radius = self.config.renderer.radius
        p = (points / radius).to(triplane.dtype)
        grid = torch.stack([p[:, [0, 1]], p[:, [0, 2]], p[:, [1, 2]]]).unsqueeze(1)  # (3,1,N,2)
        sampled = F.grid_sample(triplane, grid, mode="bilinear", align_corners=False)  # (3,C,1,N)
        sampled = sampled.squeeze(2).permute(2, 0, 1)  # (N,3,C)
        if self.config.renderer.feature_reduction == "concat":
            features = sampled.reshape(sampled.shape[0], -1)
        else:
            features = sampled.mean(dim=1)
        return self.decoder(features)

    def density(self, raw: torch.Tensor) -> torch.Tensor:
        r = self.config.renderer
        x = raw[..., 0].float() + r.density_bias
        if r.density_activation in ("exp", "trunc_exp"):
            return torch.exp(x)
        if r.density_activation == "softplus":
            return F.softplus(x)
        if r.density_activation == "relu":
            return F.relu(x)
        return x

    @staticmethod
    def color(raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw[..., 1:4].float())
