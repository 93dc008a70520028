"""DINOv2 ViT with register tokens, as torch.hub's facebookresearch/dinov2 builds it.

TRELLIS and SAM 3D Objects condition on `dinov2_vitl14_reg` features fetched through torch.hub
(code from GitHub, weights `dinov2_vitl14_reg4_pretrain.pth`). This is the same network written
for threegen with the hub checkpoint's parameter names (cls_token, register_tokens, pos_embed,
patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}, norm), so the published .pth loads strictly and no code is fetched at run time.
Token order: [cls, registers, patches]; registers carry no position embedding; position
embeddings are resized bicubically (antialiased) for inputs other than the training size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 518
    num_register_tokens: int = 4
    mlp_ratio: float = 4.0


VITL14_REG = ViTConfig()
CHECKPOINT = "dinov2_vitl14_reg4_pretrain.pth"


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig = VITL14_REG):
        super().__init__()
        self.config = config
        dim, grid = config.embed_dim, config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; kept for the checkpoint
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _position(self, height: int, width: int) -> torch.Tensor:
        pos = self.pos_embed
        grid = pos.shape[1] - 1
        side = int(grid**0.5)
        if height * width == grid and height == width:
            return pos
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=(height, width), mode="bicubic", antialias=True)
        patches = patches.permute(0, 2, 3, 1).reshape(1, height * width, -1).to(pos.dtype)
        return torch.cat([pos[:, :1], patches], dim=1)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> tokens before the final norm (B, 1 + R + patches, C)."""
        batch, _, height, width = images.shape
        p = self.config.patch_size
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        x = x + self._position(height // p, width // p).to(x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(batch, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tokens(images))


def config_from_state(state: dict[str, torch.Tensor], prefix: str = "") -> ViTConfig:
    """The shape of a ViT read off its weights (under `prefix`): for smaller ViTs than the published
    ones, such as the tests' tiny checkpoints. Heads are taken as width / 64 (at least one)."""
    dim = state[f"{prefix}cls_token"].shape[-1]
    depth = 1 + max(int(k[len(prefix) :].split(".")[1]) for k in state if k.startswith(prefix + "blocks."))
    patch = state[f"{prefix}patch_embed.proj.weight"].shape[-1]
    side = round((state[f"{prefix}pos_embed"].shape[1] - 1) ** 0.5)
    registers = state[f"{prefix}register_tokens"].shape[1] if f"{prefix}register_tokens" in state else 0
    return ViTConfig(dim, depth, max(1, dim // 64), patch, patch * side, registers)


def load(path: Path, config: ViTConfig = VITL14_REG) -> DinoVisionTransformer:
    """A hub checkpoint (state dict with the hub's names) into the network, strictly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = DinoVisionTransformer(config)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def hub_checkpoint(name: str = CHECKPOINT) -> Path:
    """Where torch.hub keeps downloaded weights: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name
