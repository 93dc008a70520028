"""Vertex colours -> a UV texture: xatlas unwrap, rasterize in UV space, pad the seams.

For families whose decoders colour mesh vertices (TRELLIS, SAM 3D Objects), so that the GLB
carries a texture of the requested size instead of per-vertex colours.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from PIL import Image

from services.recon import rasterizer

PADDING_STEPS = 8


def _pad(image: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Grow colours (H, W, 3) from filled texels (H, W) into empty ones, so that texture filtering
    at chart borders picks up no black."""
    height, width = filled.shape
    kernel = torch.ones(1, 1, 3, 3, device=image.device)
    weight = filled.float().view(1, 1, height, width)
    colour = image.permute(2, 0, 1).reshape(3, 1, height, width) * weight
    for _ in range(PADDING_STEPS):
        total = torch.nn.functional.conv2d(colour, kernel, padding=1)
        count = torch.nn.functional.conv2d(weight, kernel, padding=1)
        grow = (weight == 0) & (count > 0)
        colour = torch.where(grow, total / count.clamp(min=1), colour)
        weight = torch.where(grow, torch.ones_like(weight), weight)
    return colour.reshape(3, height, width).permute(1, 2, 0)


def bake(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, size: int, device: str = "cpu"
) -> trimesh.Trimesh:
    """A textured mesh (PBR base colour, roughness 1) from a vertex-coloured one."""
    import xatlas

    mapping, indices, uvs = xatlas.parametrize(vertices.astype(np.float32), faces.astype(np.uint32))
    dev = torch.device(device)
    uv = torch.from_numpy(uvs.astype(np.float32)).to(dev)
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=1)[None]
    tri = torch.from_numpy(indices.astype(np.int64)).to(dev)
    found, weights = rasterizer.rasterize(clip, tri, (size, size))
    per_vertex = torch.from_numpy(colors[mapping].astype(np.float32)).to(dev)[None]
    image = rasterizer.interpolate(per_vertex, found, weights, tri)[0]
    image = _pad(image, found > 0)
    # Raster row 0 is v = 0 (bottom); image row 0 is the top.
    pixels = (image.clamp(0, 1).flip(0) * 255).round().to(torch.uint8).cpu().numpy()
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(pixels), roughnessFactor=1.0, metallicFactor=0.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    return trimesh.Trimesh(vertices[mapping], indices.astype(np.int64), visual=visual, process=False)
