"""Density grid -> triangle surface (marching cubes), outward-facing."""

from __future__ import annotations

import numpy as np

from threegen.errors import InvalidArgument


class EmptySurface(InvalidArgument):
    """No part of the density field crosses the threshold: there is no object to mesh."""

    def __init__(self, description: str):
        super().__init__([("options.triposr.density_threshold", description)])


def marching_cubes_cpu(volume: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """volume[i,j,k] (i=x, j=y, k=z) -> vertices in index units (V,3), faces (F,3) wound outward."""
    from skimage import measure

    lo, hi = float(volume.min()), float(volume.max())
    if not (lo < level < hi):
        raise EmptySurface(
            f"empty surface: the density ranges {lo:.3g}..{hi:.3g} and never crosses the threshold "
            f"{level:g}; choose a threshold inside that range or an image with a clear object"
        )
    vertices, faces, _, _ = measure.marching_cubes(volume, level=level, gradient_direction="descent")
    # skimage winds faces so that normals point towards increasing values (inside, where the
    # density is high); flip them so normals point out of the object.
    return vertices.astype(np.float32), np.ascontiguousarray(faces[:, ::-1]).astype(np.int64)
