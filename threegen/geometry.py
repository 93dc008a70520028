"""Geometry helpers shared by recon, render and the gateway: stats and standard file formats."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from threegen.common.v1 import common_pb2


@dataclass
class Stats:
    kind: int = common_pb2.GEOMETRY_KIND_MESH
    vertex_count: int = 0
    face_count: int = 0
    point_count: int = 0
    bounds_min: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    bounds_max: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    watertight: bool = False

    def to_proto(self) -> common_pb2.GeometryStats:
        return common_pb2.GeometryStats(
            kind=self.kind,
            vertex_count=self.vertex_count,
            face_count=self.face_count,
            point_count=self.point_count,
            bounds_min=self.bounds_min,
            bounds_max=self.bounds_max,
            watertight=self.watertight,
        )


def mesh_stats(mesh: object) -> Stats:
    """Stats of a trimesh.Trimesh."""
    vertices = np.asarray(mesh.vertices)  # type: ignore[attr-defined]
    lo = vertices.min(axis=0) if len(vertices) else np.zeros(3)
    hi = vertices.max(axis=0) if len(vertices) else np.zeros(3)
    return Stats(
        kind=common_pb2.GEOMETRY_KIND_MESH,
        vertex_count=len(vertices),
        face_count=len(mesh.faces),  # type: ignore[attr-defined]
        bounds_min=[float(v) for v in lo],
        bounds_max=[float(v) for v in hi],
        watertight=bool(mesh.is_watertight),  # type: ignore[attr-defined]
    )


def points_stats(points: np.ndarray, kind: int) -> Stats:
    lo = points.min(axis=0) if len(points) else np.zeros(3)
    hi = points.max(axis=0) if len(points) else np.zeros(3)
    return Stats(
        kind=kind,
        point_count=len(points),
        bounds_min=[float(v) for v in lo],
        bounds_max=[float(v) for v in hi],
    )


def export_mesh(mesh: object, file_type: str) -> bytes:
    """Serialize a trimesh.Trimesh (or Scene) to glb / ply / stl / obj bytes."""
    buffer = io.BytesIO()
    mesh.export(buffer, file_type=file_type)  # type: ignore[attr-defined]
    return buffer.getvalue()


def load_mesh(data: bytes, file_type: str) -> object:
    """Parse mesh bytes into one trimesh.Trimesh (scenes are flattened)."""
    import trimesh

    loaded = trimesh.load(io.BytesIO(data), file_type=file_type, process=False, force="mesh")
    return loaded
