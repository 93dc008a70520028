"""Post-processing of generated meshes: floaters, degenerate faces, a face budget.

The same three steps as Hunyuan3D-2's and TRELLIS's own post-processing, done in memory with
numpy/scipy and fast-simplification (upstream round-trips through pymeshlab and temporary
files): drop connected pieces much smaller than the object, drop zero-area and repeated
faces, then quadric-decimate to at most `max_faces`.
"""

from __future__ import annotations

import numpy as np


def _components(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """Connected-component label per vertex (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = faces[:, [0, 1, 2]].ravel()
    b = faces[:, [1, 2, 0]].ravel()
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(vertex_count, vertex_count))
    _, labels = connected_components(graph, directed=False)
    return labels


def remove_floaters(vertices: np.ndarray, faces: np.ndarray, fraction: float = 0.1):
    """Keep the pieces whose bounding-box diagonal is at least `fraction` of the whole mesh's."""
    if len(faces) == 0:
        return vertices, faces
    labels = _components(faces, len(vertices))
    count = labels.max() + 1
    if count == 1:
        return vertices, faces
    lo = np.full((count, 3), np.inf)
    hi = np.full((count, 3), -np.inf)
    np.minimum.at(lo, labels, vertices)
    np.maximum.at(hi, labels, vertices)
    diagonal = np.linalg.norm(hi - lo, axis=1)
    whole = np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0))
    keep = diagonal >= fraction * whole
    return compact(vertices, faces[keep[labels[faces[:, 0]]]])


def remove_degenerate(vertices: np.ndarray, faces: np.ndarray):
    """Drop faces with a repeated vertex or no area, and exact duplicates of a face."""
    if len(faces) == 0:
        return vertices, faces
    corners = vertices[faces]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    faces = faces[(area > 0) & ~repeated]
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    return compact(vertices, faces[np.sort(first)])


def compact(vertices: np.ndarray, faces: np.ndarray):
    """Drop vertices no face uses; renumber faces."""
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int):
    """Quadric edge-collapse down to at most `max_faces` faces (the library stops near its
    target, sometimes a little above it, so it is asked again on what it returned)."""
    import fast_simplification

    for _ in range(4):
        if len(faces) <= max_faces:
            break
        vertices, faces = fast_simplification.simplify(
            vertices.astype(np.float32), faces.astype(np.int32), target_count=max_faces
        )
    return np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64)


def clean(vertices: np.ndarray, faces: np.ndarray, max_faces: int):
    vertices, faces = remove_floaters(vertices, faces)
    vertices, faces = remove_degenerate(vertices, faces)
    return decimate(vertices, faces, max_faces)
