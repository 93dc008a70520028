"""Geometry files -> what render works on: a mesh, a point cloud, or 3D Gaussian splats.

Meshes come as GLB, PLY or OBJ; point clouds as PLY with positions and optional normals and
colours (XCube's output); splats as PLY in the standard 3DGS layout (x y z, f_dc_0..2,
opacity, scale_0..2, rot_0..3; SAM 3D and TRELLIS write it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument
from threegen.geometry import Stats, points_stats

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic: colour = 0.5 + SH_C0 * f_dc
SPLAT_FIELDS = {
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
}
MAX_POINTS = 20_000_000
MAX_FACES = 20_000_000


@dataclass
class Points:
    """A point cloud; also the splat representation (with scales, rotations, opacities)."""

    positions: np.ndarray  # (N,3) float32
    colors: np.ndarray  # (N,3) float32 in [0,1]
    normals: np.ndarray | None = None  # (N,3)
    scales: np.ndarray | None = None  # (N,3) standard deviations (splats)
    rotations: np.ndarray | None = None  # (N,4) unit quaternions w x y z (splats)
    opacities: np.ndarray | None = None  # (N,) in [0,1] (splats)
    source: bytes = b""  # the PLY as received, exported unchanged

    @property
    def kind(self) -> int:
        return (
            common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT
            if self.scales is not None
            else common_pb2.GEOMETRY_KIND_POINT_CLOUD
        )

    def stats(self) -> Stats:
        return points_stats(self.positions, self.kind)


def sniff_format(data: bytes, name: str = "") -> str:
    if data[:4] == b"glTF":
        return "glb"
    if data[:4] == b"ply\n" or data[:5] == b"ply\r\n":
        return "ply"
    head = data[:4096].lstrip()
    if name.lower().endswith(".obj") or head.startswith((b"v ", b"#", b"o ", b"mtllib", b"g ")):
        return "obj"
    raise InvalidArgument([("geometry", "unrecognised file: expected GLB, PLY or OBJ")])


def _points_from_ply(cloud: object, data: bytes) -> Points:
    raw = cloud.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")  # type: ignore[attr-defined]
    if isinstance(raw, dict):  # ASCII PLYs come as columns
        raw = {name: np.asarray(column).reshape(-1) for name, column in raw.items()}
        names = set(raw)
    elif raw is not None and raw.dtype.names is not None:
        names = set(raw.dtype.names)
    else:
        raise InvalidArgument([("geometry", "the PLY has no vertex element")])
    if not {"x", "y", "z"} <= names:
        raise InvalidArgument([("geometry", "the PLY's vertices have no x, y, z")])
    positions = np.stack([raw["x"], raw["y"], raw["z"]], axis=1).astype(np.float32)
    if names >= SPLAT_FIELDS:
        dc = np.stack([raw["f_dc_0"], raw["f_dc_1"], raw["f_dc_2"]], axis=1).astype(np.float32)
        rotations = np.stack([raw[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float32)
        norms = np.linalg.norm(rotations, axis=1, keepdims=True)
        return Points(
            positions=positions,
            colors=np.clip(0.5 + SH_C0 * dc, 0.0, 1.0),
            scales=np.exp(np.stack([raw[f"scale_{i}"] for i in range(3)], axis=1)).astype(np.float32),
            rotations=rotations / np.where(norms > 0, norms, 1.0),
            opacities=(1.0 / (1.0 + np.exp(-raw["opacity"].astype(np.float32)))),
            source=data,
        )
    if {"red", "green", "blue"} <= names:
        colors = np.stack([raw["red"], raw["green"], raw["blue"]], axis=1).astype(np.float32)
        colors /= 255.0 if raw["red"].dtype.kind in "ui" else 1.0
    else:
        colors = np.full((len(positions), 3), 0.72, dtype=np.float32)
    normals = None
    if {"nx", "ny", "nz"} <= names:
        normals = np.stack([raw["nx"], raw["ny"], raw["nz"]], axis=1).astype(np.float32)
    return Points(positions=positions, colors=colors, normals=normals, source=data)


def _scene_mesh(scene: object) -> object:
    """A glTF scene as one mesh. The common case, one mesh placed once, is taken as it is:
    trimesh's general concatenation copies every array and recomputes per-face colours, which
    cost ~100 ms for a 300k-face marching-cubes mesh on the hot path."""
    import trimesh

    placed = scene.graph.nodes_geometry  # type: ignore[attr-defined]
    if len(placed) == 1:
        transform, name = scene.graph[placed[0]]  # type: ignore[attr-defined]
        mesh = scene.geometry[name]  # type: ignore[attr-defined]
        if isinstance(mesh, trimesh.Trimesh):
            if not np.allclose(transform, np.eye(4)):
                mesh.apply_transform(transform)
            return mesh
    return scene.to_mesh()  # type: ignore[attr-defined]


def load_geometry(data: bytes, name: str = "", kind: int = common_pb2.GEOMETRY_KIND_UNSPECIFIED) -> object:
    """-> trimesh.Trimesh, or Points. `kind`, when set, must match what the file holds."""
    import trimesh

    file_type = sniff_format(data, name)
    try:
        loaded = trimesh.load(
            io.BytesIO(data), file_type=file_type, process=False, force="mesh" if file_type == "obj" else None
        )
        if isinstance(loaded, trimesh.Scene):
            loaded = _scene_mesh(loaded)
    except Exception as exc:
        raise InvalidArgument([("geometry", f"could not parse {file_type.upper()}: {exc}")]) from None
    if isinstance(loaded, trimesh.PointCloud):
        geometry: object = _points_from_ply(loaded, data)
        found = geometry.kind  # type: ignore[attr-defined]
        count = len(geometry.positions)  # type: ignore[attr-defined]
        if count == 0:
            raise InvalidArgument([("geometry", "the PLY holds no points")])
        if count > MAX_POINTS:
            raise InvalidArgument([("geometry", f"{count} points exceed the limit of {MAX_POINTS}")])
        if not np.isfinite(geometry.positions).all():  # type: ignore[attr-defined]
            raise InvalidArgument([("geometry", "point positions contain NaN or infinity")])
    elif isinstance(loaded, trimesh.Trimesh) and len(loaded.faces) > 0:
        geometry, found = loaded, common_pb2.GEOMETRY_KIND_MESH
        if len(loaded.faces) > MAX_FACES:
            raise InvalidArgument(
                [("geometry", f"{len(loaded.faces)} faces exceed the limit of {MAX_FACES}")]
            )
        if not np.isfinite(loaded.vertices).all():
            raise InvalidArgument([("geometry", "vertex positions contain NaN or infinity")])
    else:
        raise InvalidArgument([("geometry", f"the {file_type.upper()} holds no triangles or points")])
    if kind not in (common_pb2.GEOMETRY_KIND_UNSPECIFIED, found):
        raise InvalidArgument(
            [
                (
                    "params.kind",
                    f"says {common_pb2.GeometryKind.Name(kind)} but the file holds "
                    f"{common_pb2.GeometryKind.Name(found)}",
                )
            ]
        )
    return geometry


def write_points_ply(points: Points) -> bytes:
    """Binary PLY of a point cloud: positions, normals when known, 8-bit colours."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if points.normals is not None:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    table = np.empty(len(points.positions), dtype=fields)
    for axis, key in enumerate("xyz"):
        table[key] = points.positions[:, axis]
        if points.normals is not None:
            table[f"n{key}"] = points.normals[:, axis]
    rgb = np.clip(np.round(points.colors * 255.0), 0, 255).astype(np.uint8)
    for axis, key in enumerate(("red", "green", "blue")):
        table[key] = rgb[:, axis]
    types = {"f4": "float", "u1": "uchar"}
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {len(table)}\n"
    header += "".join(f"property {types[t]} {n}\n" for n, t in fields) + "end_header\n"
    return header.encode() + table.tobytes()
