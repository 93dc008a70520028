"""A torch triangle rasterizer with the interface of Hunyuan3D's `custom_rasterizer`.

Hunyuan3D-2's texture baker rasterizes through `custom_rasterizer`, a C++/CUDA extension that
hy3dgen's wheel does not ship and that only builds with nvcc. This module gives the same two
calls in plain torch, on any device, so texturing needs no compiled extension:

- `rasterize(pos, tri, resolution)`: `pos` (1, V, 4) clip-space vertices, `tri` (F, 3) int,
  `resolution` (height, width). Returns `findices` (H, W) int32, 1-based face ids with 0 for
  background, and `barycentric` (H, W, 3) float32, perspective-corrected.
- `interpolate(attr, findices, barycentric, tri)`: per-pixel attribute (1, H, W, C).

Conventions follow the extension: pixel centres at +0.5, x and y mapped as
`(ndc * 0.5 + 0.5) * (size - 1) + 0.5`, depth `z/w * 0.49999 + 0.5`, the nearest face wins,
faces behind the near plane are dropped. Coverage is found per face over its bounding box, in
chunks of candidate pixels so that memory stays bounded whatever the triangle sizes.
"""

from __future__ import annotations

import torch

DEPTH_STEPS = 1 << 18  # depth quantisation of the z-buffer, as in the extension
FACE_BITS = 31
CANDIDATES_PER_CHUNK = 1 << 23


def _screen(pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    w = pos[:, 3:4]
    x = (pos[:, 0:1] / w * 0.5 + 0.5) * (width - 1) + 0.5
    y = (pos[:, 1:2] / w * 0.5 + 0.5) * (height - 1) + 0.5
    z = pos[:, 2:3] / w * 0.49999 + 0.5
    return torch.cat([x, y, z], dim=1)


def _barycentric(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """Screen-space barycentrics of points (px, py) in triangles (a, b, c); NaN for degenerate ones."""
    area = (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]) - (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
    beta = ((c[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (c[:, 1] - a[:, 1])) / area
    gamma = ((px - a[:, 0]) * (b[:, 1] - a[:, 1]) - (b[:, 0] - a[:, 0]) * (py - a[:, 1])) / area
    return 1.0 - beta - gamma, beta, gamma


def rasterize(
    pos: torch.Tensor,
    tri: torch.Tensor,
    resolution,
    clamp_depth: torch.Tensor | None = None,
    use_depth_prior: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_depth_prior:
        raise NotImplementedError("depth-prior rasterization is not used by Hunyuan3D-2's baker")
    height, width = int(resolution[0]), int(resolution[1])
    device = pos.device
    vertices = pos[0].float()
    faces = tri.long()
    screen = _screen(vertices, height, width)
    corners = screen[faces]  # (F, 3, 3)
    lo = corners[:, :, :2].amin(dim=1)
    hi = corners[:, :, :2].amax(dim=1)
    # The extension visits px from int(x_min) while px < x_max + 1; the same for y.
    x0 = lo[:, 0].trunc().clamp(min=0).long()
    y0 = lo[:, 1].trunc().clamp(min=0).long()
    x1 = torch.minimum((hi[:, 0] + 1).ceil().long() - 1, torch.tensor(width - 1, device=device))
    y1 = torch.minimum((hi[:, 1] + 1).ceil().long() - 1, torch.tensor(height - 1, device=device))
    box_w = (x1 - x0 + 1).clamp(min=0)
    box_h = (y1 - y0 + 1).clamp(min=0)
    counts = box_w * box_h
    counts[~torch.isfinite(corners).all(dim=2).all(dim=1)] = 0

    empty = torch.iinfo(torch.int64).max
    zbuffer = torch.full((height * width,), empty, dtype=torch.int64, device=device)
    starts = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    face = 0
    n_faces = faces.shape[0]
    while face < n_faces and total:
        # Take faces until the chunk holds enough candidate pixels (at least one face).
        limit = int(starts[face]) + CANDIDATES_PER_CHUNK
        end = int(torch.searchsorted(starts, torch.tensor(limit, device=device), right=False))
        end = max(end, face + 1)
        chunk_counts = counts[face:end]
        n = int(chunk_counts.sum())
        if n:
            ids = torch.repeat_interleave(torch.arange(face, end, device=device), chunk_counts, output_size=n)
            offset = torch.arange(n, device=device) - torch.repeat_interleave(
                starts[face:end] - starts[face], chunk_counts, output_size=n
            )
            px = x0[ids] + offset % box_w[ids]
            py = y0[ids] + torch.div(offset, box_w[ids], rounding_mode="floor")
            a, b, c = corners[ids, 0], corners[ids, 1], corners[ids, 2]
            alpha, beta, gamma = _barycentric(a, b, c, px.float() + 0.5, py.float() + 0.5)
            inside = (alpha >= 0) & (alpha <= 1) & (beta >= 0) & (beta <= 1) & (gamma >= 0) & (gamma <= 1)
            depth = alpha * a[:, 2] + beta * b[:, 2] + gamma * c[:, 2]
            inside &= depth >= 0
            key = (depth * DEPTH_STEPS).long() * (1 << FACE_BITS) + (ids + 1)
            pixel = py * width + px
            zbuffer.scatter_reduce_(0, pixel[inside], key[inside], reduce="amin")
        face = end

    hit = zbuffer != empty
    findices = torch.zeros(height * width, dtype=torch.int32, device=device)
    barycentric = torch.zeros(height * width, 3, dtype=torch.float32, device=device)
    pixels = hit.nonzero().squeeze(1)
    if pixels.numel():
        ids = (zbuffer[pixels] % (1 << FACE_BITS)) - 1
        findices[pixels] = (ids + 1).int()
        a, b, c = corners[ids, 0], corners[ids, 1], corners[ids, 2]
        px = (pixels % width).float() + 0.5
        py = torch.div(pixels, width, rounding_mode="floor").float() + 0.5
        alpha, beta, gamma = _barycentric(a, b, c, px, py)
        w = vertices[faces[ids], 3]  # (P, 3) clip w of the three corners
        weights = torch.stack([alpha / w[:, 0], beta / w[:, 1], gamma / w[:, 2]], dim=1)
        barycentric[pixels] = weights / weights.sum(dim=1, keepdim=True)
    return findices.view(height, width), barycentric.view(height, width, 3)


def interpolate(
    attr: torch.Tensor, findices: torch.Tensor, barycentric: torch.Tensor, tri: torch.Tensor
) -> torch.Tensor:
    """Blend per-vertex attributes (1, V, C) with the barycentrics of each pixel's face."""
    face = (findices.long() - 1).clamp(min=0)
    corners = attr[0, tri.long()[face]]  # (H, W, 3, C)
    return (barycentric.unsqueeze(-1) * corners).sum(dim=-2).unsqueeze(0)
