"""Mesh clean-up shared by the recon families: floaters, degenerate faces, face budget."""

from __future__ import annotations

import numpy as np
import trimesh

from services.recon import meshclean


def test_small_floaters_go_big_pieces_stay() -> None:
    body = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    second = trimesh.creation.icosphere(subdivisions=2, radius=0.5).apply_translation([3, 0, 0])
    speck = trimesh.creation.icosphere(subdivisions=1, radius=0.05).apply_translation([0, 3, 0])
    mesh = trimesh.util.concatenate([body, second, speck])
    vertices, faces = meshclean.remove_floaters(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    assert len(faces) == len(body.faces) + len(second.faces)
    assert len(vertices) == len(body.vertices) + len(second.vertices)
    assert vertices[:, 1].max() < 1.5  # the speck at y=3 is gone


def test_degenerate_and_repeated_faces_are_dropped() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [9, 9, 9]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [1, 2, 0], [0, 0, 1], [0, 1, 3]])  # ok, duplicate, repeated, zero area
    vertices_out, faces_out = meshclean.remove_degenerate(vertices, faces)
    assert faces_out.tolist() == [[0, 1, 2]]
    assert len(vertices_out) == 3  # unused vertices compacted away


def test_decimation_reaches_the_budget() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20,480 faces
    vertices, faces = meshclean.decimate(np.asarray(sphere.vertices), np.asarray(sphere.faces), 1000)
    assert 500 < len(faces) <= 1000
    assert faces.max() < len(vertices)
    radius = np.linalg.norm(vertices, axis=1)
    assert np.abs(radius - 1).max() < 0.1  # still the same surface
