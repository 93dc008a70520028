"""Marching cubes: the derived case table and the torch extractor against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import gaussian_filter

from services.recon.isosurface import (
    CORNERS,
    EDGE_AXIS,
    EDGE_OFFSET,
    EmptySurface,
    marching_cubes_cpu,
    marching_cubes_torch,
    triangle_table,
)


def test_every_case_faces_away_from_its_inside_corners() -> None:
    table, counts = triangle_table()
    assert counts[0] == counts[255] == 0 and counts.max() <= 5
    midpoints = EDGE_OFFSET + 0.5 * np.eye(3)[EDGE_AXIS]
    for case in range(1, 255):
        inside = np.array([(case >> c) & 1 for c in range(8)], dtype=bool)
        tris = table[case][: counts[case] * 3].reshape(-1, 3)
        assert len(tris) >= 1
        # Each crossed cube edge is used, and only crossed edges are.
        crossed = {e for e in range(12) if inside[_corner(e, 0)] != inside[_corner(e, 1)]}
        assert set(tris.ravel()) == crossed, case
        # Stepping along each triangle's normal leaves the inside: the interpolated field drops.
        p = midpoints[tris]
        normals = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        centres = p.mean(axis=1)
        ahead = trilinear(inside, centres + 0.05 * normals)
        behind = trilinear(inside, centres - 0.05 * normals)
        assert (ahead < behind).all(), case


def trilinear(inside: np.ndarray, points: np.ndarray) -> np.ndarray:
    weights = np.ones((len(points), 8))
    for corner, position in enumerate(CORNERS):
        for axis in range(3):
            weights[:, corner] *= points[:, axis] if position[axis] else 1 - points[:, axis]
    return weights @ inside.astype(float)


def _corner(edge: int, end: int) -> int:
    position = EDGE_OFFSET[edge] + (np.eye(3, dtype=int)[EDGE_AXIS[edge]] if end else 0)
    return int(position[0] + 2 * position[1] + 4 * position[2])


def ellipsoid(resolution: int) -> np.ndarray:
    g = np.linspace(-1, 1, resolution)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    return 50 * np.exp(-(x**2 + (y * 1.5) ** 2 + (z * 2) ** 2) * 3)


@pytest.mark.parametrize("resolution", [32, 65])
def test_torch_matches_scikit_image_on_a_smooth_surface(resolution: int) -> None:
    volume = ellipsoid(resolution)
    v, f = marching_cubes_torch(torch.from_numpy(volume), 25.0)
    ours = trimesh.Trimesh(v.numpy(), f.numpy())
    ref = trimesh.Trimesh(*marching_cubes_cpu(volume, 25.0))
    assert ours.is_watertight and ours.is_winding_consistent
    assert len(ours.faces) == len(ref.faces)
    assert ours.volume > 0 and ours.volume == pytest.approx(ref.volume, rel=1e-3)  # same loops, other fans
    assert ours.area == pytest.approx(ref.area, rel=1e-3)


def test_random_fields_give_closed_outward_surfaces() -> None:
    rng = np.random.default_rng(0)
    volume = gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    volume[[0, -1]] = volume[:, [0, -1]] = volume[:, :, [0, -1]] = volume.min()  # closed at the border
    v, f = marching_cubes_torch(torch.from_numpy(volume), 0.0)
    mesh = trimesh.Trimesh(v.numpy(), f.numpy())
    assert mesh.is_watertight and mesh.is_winding_consistent
    bodies = mesh.split(only_watertight=False)
    assert len(bodies) > 3 and all(b.volume > 0 for b in bodies)
    ref = trimesh.Trimesh(*marching_cubes_cpu(volume, 0.0))
    assert mesh.volume == pytest.approx(ref.volume, rel=2e-3)


def test_no_crossing_is_a_named_error() -> None:
    with pytest.raises(EmptySurface) as caught:
        marching_cubes_torch(torch.zeros(8, 8, 8), 1.0)
    assert caught.value.violations[0][0] == "options.triposr.density_threshold"
