"""Density grid -> triangle surface by marching cubes, outward-facing, on the GPU or the CPU.

On CUDA the whole extraction runs in torch (no host round trip of the 256^3 grid): the case
of every cube, its triangles from a lookup table, one vertex per crossed grid edge (shared
by neighbouring cubes, so the mesh is welded), interpolated to the iso-level. On the CPU,
scikit-image's implementation is used.

The lookup table is derived here rather than typed in: for each of the 256 corner patterns
the iso-contour is traced over the six cube faces (each run of inside corners on a face is
cut off by one segment, so ambiguous faces always separate inside corners: a rule both cubes
sharing the face agree on, which keeps the surface closed), the segments are chained into
loops and each loop is fanned into triangles. Segments are oriented with the inside on their
right as seen from outside the cube, which makes every triangle face away from the inside.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from threegen.errors import InvalidArgument

# Corner c of a cube sits at (c & 1, c >> 1 & 1, c >> 2 & 1).
CORNERS = np.array([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=np.int64)


def _edges() -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], int]]:
    """12 edges: start offset (3,), axis; and a lookup from a corner pair to the edge id."""
    offsets, axes, by_pair = [], [], {}
    for axis in range(3):
        for corner in range(8):
            if CORNERS[corner][axis] == 0:
                other = corner | (1 << axis)
                by_pair[(corner, other)] = by_pair[(other, corner)] = len(offsets)
                offsets.append(CORNERS[corner])
                axes.append(axis)
    return np.array(offsets), np.array(axes), by_pair


EDGE_OFFSET, EDGE_AXIS, EDGE_BY_PAIR = _edges()


def _faces() -> list[list[int]]:
    """The six faces, each as four corners in counter-clockwise order seen from outside."""
    faces = []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        for side in (0, 1):
            square = [(0, 0), (1, 0), (1, 1), (0, 1)]
            if side == 0:  # seen from the other side, the same walk is clockwise
                square = square[::-1]
            corners = []
            for du, dv in square:
                position = [0, 0, 0]
                position[axis], position[u], position[v] = side, du, dv
                corners.append(position[0] | position[1] << 1 | position[2] << 2)
            faces.append(corners)
    return faces


def _triangles(case: int) -> list[tuple[int, int, int]]:
    inside = [(case >> c) & 1 == 1 for c in range(8)]
    following: dict[int, int] = {}
    for face in _faces():
        flags = [inside[c] for c in face]
        if all(flags) or not any(flags):
            continue
        for i in range(4):  # a run of inside corners starts where the previous corner is outside
            if flags[i] and not flags[i - 1]:
                j = i
                while flags[(j + 1) % 4]:
                    j = (j + 1) % 4
                entry = EDGE_BY_PAIR[(face[i - 1], face[i])]
                exit_ = EDGE_BY_PAIR[(face[j], face[(j + 1) % 4])]
                following[entry] = exit_
    triangles = []
    while following:
        start, loop = next(iter(following)), []
        edge = start
        while edge in following:
            loop.append(edge)
            edge = following.pop(edge)
        triangles += [(loop[0], loop[k], loop[k + 1]) for k in range(1, len(loop) - 1)]
    return triangles


@functools.cache
def triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """(256, 15) edge ids per case, -1 padded; and the triangle count per case."""
    table = np.full((256, 15), -1, dtype=np.int64)
    counts = np.zeros(256, dtype=np.int64)
    for case in range(256):
        flat = [e for triangle in _triangles(case) for e in triangle]
        table[case, : len(flat)] = flat
        counts[case] = len(flat) // 3
    return table, counts


DEFAULT_FIELD = "options.triposr.density_threshold"


class EmptySurface(InvalidArgument):
    """No part of the field crosses the level: there is no object to mesh."""

    def __init__(self, description: str, field: str = DEFAULT_FIELD):
        super().__init__([(field, description)])


def _check_crossing(lo: float, hi: float, level: float, field: str) -> None:
    if not (lo < level < hi):
        raise EmptySurface(
            f"empty surface: the field ranges {lo:.3g}..{hi:.3g} and never crosses the level "
            f"{level:g}; choose a level inside that range or an image with a clear object",
            field,
        )


@torch.inference_mode()
def marching_cubes_edges(volume: torch.Tensor, level: float, field: str = DEFAULT_FIELD):
    """Marching cubes that reports each vertex as a point on a grid edge.

    volume[i,j,k] (i=x, j=y, k=z), high inside. Returns (start (V,3) long grid index of the
    edge's lower end, axis (V,) long, t (V,) float position along the edge, faces (F,3)), so
    callers can interpolate their own per-grid-point attributes onto the surface."""
    volume = volume.float()
    _check_crossing(float(volume.min()), float(volume.max()), level, field)
    device = volume.device
    nx, ny, nz = volume.shape
    inside = volume > level
    cases = torch.zeros((nx - 1, ny - 1, nz - 1), dtype=torch.uint8, device=device)
    for corner, (dx, dy, dz) in enumerate(CORNERS.tolist()):
        cases |= inside[dx : nx - 1 + dx, dy : ny - 1 + dy, dz : nz - 1 + dz].to(torch.uint8) << corner
    active = ((cases != 0) & (cases != 255)).nonzero()  # (M,3) cube origins
    table, _ = triangle_table()
    edges = torch.as_tensor(table, device=device)[cases[active[:, 0], active[:, 1], active[:, 2]].long()]
    used = edges >= 0
    cube = used.nonzero()[:, 0]
    local = edges[used]
    start = active[cube] + torch.as_tensor(EDGE_OFFSET, device=device)[local]
    axis = torch.as_tensor(EDGE_AXIS, device=device)[local]
    key = ((start[:, 0] * ny + start[:, 1]) * nz + start[:, 2]) * 3 + axis  # one id per grid edge
    unique, inverse = torch.unique(key, return_inverse=True)
    axis_u = unique % 3
    cell = unique // 3
    p0 = torch.stack([cell // (ny * nz), (cell // nz) % ny, cell % nz], dim=1)
    p1 = p0 + torch.nn.functional.one_hot(axis_u, 3)
    v0 = volume[p0[:, 0], p0[:, 1], p0[:, 2]]
    v1 = volume[p1[:, 0], p1[:, 1], p1[:, 2]]
    t = ((level - v0) / (v1 - v0)).clamp_(0.0, 1.0)
    return p0, axis_u, t, inverse.view(-1, 3)


def marching_cubes_torch(
    volume: torch.Tensor, level: float, field: str = DEFAULT_FIELD
) -> tuple[torch.Tensor, torch.Tensor]:
    """volume[i,j,k] (i=x, j=y, k=z), high inside -> vertices (V,3) in index units, faces (F,3).

    `field` names the request field an empty surface is blamed on."""
    start, axis, t, faces = marching_cubes_edges(volume, level, field)
    step = torch.nn.functional.one_hot(axis, 3).float()
    return start.float() + t[:, None] * step, faces


def marching_cubes_cpu(
    volume: np.ndarray, level: float, field: str = DEFAULT_FIELD
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image marching cubes, same conventions as marching_cubes_torch."""
    from skimage import measure

    _check_crossing(float(volume.min()), float(volume.max()), level, field)
    vertices, faces, _, _ = measure.marching_cubes(volume, level=level, gradient_direction="descent")
    # skimage winds faces so that normals point towards increasing values (inside, where the
    # density is high); flip them so normals point out of the object.
    return vertices.astype(np.float32), np.ascontiguousarray(faces[:, ::-1]).astype(np.int64)


def marching_cubes(
    volume: torch.Tensor, level: float, field: str = DEFAULT_FIELD
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch: torch on CUDA (the grid stays on the GPU), scikit-image on the CPU."""
    if volume.is_cuda:
        vertices, faces = marching_cubes_torch(volume, level, field)
        return vertices.cpu().numpy(), faces.cpu().numpy()
    return marching_cubes_cpu(volume.float().numpy(), level, field)
