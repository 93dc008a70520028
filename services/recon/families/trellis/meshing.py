"""TRELLIS mesh-decoder features -> triangle mesh with vertex colours.

The decoder predicts, for every voxel of a 4x finer sparse grid, the SDF, a bounded deformation
and (with colour) six colour/normal channels at its 8 corners, plus 21 FlexiCubes weights.
Upstream extracts the surface with FlexiCubes (a CUDA-heavy dual method). Here corner values
are averaged over the voxels sharing each grid point (as upstream does before FlexiCubes), the
zero level set is found by marching cubes on the SDF, and each surface vertex takes the
deformed positions and colours of its edge's two end points, linearly blended. The FlexiCubes
weights (which only adjust vertex placement inside a cube) are not used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from services.recon import meshclean, texturebake
from services.recon.isosurface import CORNERS, marching_cubes_edges
from services.recon.sparse import SparseTensor
from threegen.chunks import Artifact
from threegen.geometry import Stats, export_mesh, stats_from_arrays
from threegen.runtime.work import Reporter

GLB_FROM_ZUP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)  # z-up -> y-up, row vectors


@dataclass
class Mesh:
    vertices: np.ndarray  # (V, 3) float32, TRELLIS frame: z up, inside [-0.5, 0.5]^3
    faces: np.ndarray  # (F, 3) int64, outward
    colors: np.ndarray | None  # (V, 3) float32 in [0, 1]


def features_to_mesh(features: SparseTensor, resolution: int, use_color: bool, field: str = "image") -> Mesh:
    device = features.device
    coords = features.coords[:, 1:].long()
    feats = features.feats.float()
    count = coords.shape[0]
    sdf = feats[:, 0:8] - 1.0 / resolution  # upstream's SDF bias
    deform = feats[:, 8:32].reshape(count, 8, 3)
    attrs = [sdf.unsqueeze(-1), deform]
    if use_color:
        attrs.append(feats[:, 53:101].reshape(count, 8, 6))
    corner_values = torch.cat(attrs, dim=-1)  # (N, 8, 1 + 3 [+ 6])

    side = resolution + 1
    corners = coords.unsqueeze(1) + torch.as_tensor(CORNERS, device=device).unsqueeze(0)
    keys = ((corners[..., 0] * side + corners[..., 1]) * side + corners[..., 2]).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    width = corner_values.shape[-1]
    per_point = torch.zeros(unique.shape[0], width, device=device).scatter_reduce(
        0,
        inverse.unsqueeze(1).expand(-1, width),
        corner_values.reshape(-1, width),
        reduce="mean",
        include_self=False,
    )

    grid = torch.ones(side**3, device=device)  # +1 outside where no voxel says otherwise
    grid[unique] = per_point[:, 0]
    start, axis, t, faces = marching_cubes_edges(-grid.view(side, side, side), 0.0, field)
    end = start + torch.nn.functional.one_hot(axis, 3)

    def lookup(points: torch.Tensor) -> torch.Tensor:
        """Per-point attributes (deform, colour) of grid points; zeros where no voxel touches."""
        key = (points[:, 0] * side + points[:, 1]) * side + points[:, 2]
        position = torch.searchsorted(unique, key).clamp(max=unique.shape[0] - 1)
        found = unique[position] == key
        values = per_point[position, 1:]
        return torch.where(found.unsqueeze(1), values, torch.zeros_like(values))

    def place(points: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return points.float() / resolution - 0.5 + (1 - 1e-8) / (resolution * 2) * torch.tanh(values[:, :3])

    a, b = lookup(start), lookup(end)
    weight = t.unsqueeze(1)
    vertices = place(start, a) * (1 - weight) + place(end, b) * weight
    colors = None
    if use_color:
        colors = (a[:, 3:6] * (1 - weight) + b[:, 3:6] * weight).clamp(0, 1).cpu().numpy().astype(np.float32)
    return Mesh(vertices.cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.int64), colors)


def finish_mesh(
    mesh: Mesh,
    simplify: float,
    texture_size: int,
    device: str,
    reporter: Reporter,
    timings: list[tuple[str, float]],
    with_texture: bool = True,
) -> tuple[Artifact, Stats]:
    """Decoder mesh -> mesh.glb: decimated by `simplify` (fraction of faces removed), turned
    y-up, colours baked into a texture of `texture_size` (or kept per vertex)."""
    started = time.perf_counter()
    target = max(100, int(len(mesh.faces) * (1.0 - simplify)))
    vertices, faces = meshclean.remove_degenerate(mesh.vertices, mesh.faces)
    if simplify > 0:
        vertices, faces = meshclean.decimate(vertices, faces, target)
    colors = None if mesh.colors is None else _nearest_colors(mesh.vertices, mesh.colors, vertices)
    vertices = vertices @ GLB_FROM_ZUP
    timings.append(("simplify", time.perf_counter() - started))
    reporter.progress("simplify", 0.93, f"{len(mesh.faces)} -> {len(faces)} faces")
    started = time.perf_counter()
    if colors is not None and with_texture:
        result = texturebake.bake(vertices, faces, colors, texture_size, device)
    else:
        import trimesh

        rgba = None if colors is None else np.concatenate(
            [np.clip(colors * 255, 0, 255), np.full((len(colors), 1), 255.0)], axis=1
        ).astype(np.uint8)  # fmt: skip
        result = trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False)
    glb = Artifact("mesh.glb", export_mesh(result, "glb"))
    timings.append(("bake_texture" if with_texture else "export", time.perf_counter() - started))
    return glb, stats_from_arrays(vertices, faces)


def _nearest_colors(source: np.ndarray, colors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    _, index = cKDTree(source).query(targets)
    return colors[index]
