"""Mesh operations before export: simplification, texture size limits, OBJ packages, and
surface reconstruction from point clouds."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image

from services.render.geometry import Points
from services.render.params import SimplifyParams
from threegen.errors import InvalidArgument


def simplify(mesh: object, params: SimplifyParams) -> object:
    """Quadric decimation (fast-simplification); vertex colours and UVs follow the vertices.

    Each kept vertex takes the mean colour (or UV) of the vertices collapsed into it; UVs
    can smear across texture seams where a collapse joins two sides of one.
    """
    import fast_simplification
    import trimesh

    faces = len(mesh.faces)  # type: ignore[attr-defined]
    if params.target_faces:
        if params.target_faces >= faces:
            return mesh
        reduction = 1.0 - params.target_faces / faces
    else:
        reduction = params.ratio
    if reduction <= 0.0:
        return mesh
    vertices = np.asarray(mesh.vertices, dtype=np.float64)  # type: ignore[attr-defined]
    _, _, collapses = fast_simplification.simplify(
        vertices,
        np.asarray(mesh.faces),
        target_reduction=reduction,
        return_collapses=True,  # type: ignore[attr-defined]
    )
    new_vertices, new_faces, mapping = fast_simplification.replay_simplification(
        vertices,
        np.asarray(mesh.faces),
        collapses,  # type: ignore[attr-defined]
    )

    def carried(values: np.ndarray) -> np.ndarray:
        total = np.zeros((len(new_vertices), values.shape[1]), dtype=np.float64)
        np.add.at(total, mapping, values.astype(np.float64))
        counts = np.bincount(mapping, minlength=len(new_vertices))[:, None]
        return total / np.maximum(counts, 1)

    visual = mesh.visual  # type: ignore[attr-defined]
    if visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        new_visual = trimesh.visual.TextureVisuals(
            uv=carried(np.asarray(visual.uv)), material=visual.material
        )
    elif visual.kind == "vertex":
        colors = np.asarray(visual.vertex_colors)
        new_visual = trimesh.visual.ColorVisuals(vertex_colors=np.round(carried(colors)).astype(np.uint8))
    else:
        new_visual = None
    return trimesh.Trimesh(new_vertices.astype(np.float32), new_faces, visual=new_visual, process=False)


def limit_textures(mesh: object, limit: int) -> object:
    """Downscale the base-colour texture so its longer side is at most `limit` pixels."""
    if not limit or mesh.visual.kind != "texture":  # type: ignore[attr-defined]
        return mesh
    material = mesh.visual.material  # type: ignore[attr-defined]
    for attribute in ("baseColorTexture", "image"):
        image = getattr(material, attribute, None)
        if isinstance(image, Image.Image) and max(image.size) > limit:
            scale = limit / max(image.size)
            size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            setattr(material, attribute, image.resize(size, Image.Resampling.LANCZOS))
    return mesh


def obj_package(mesh: object) -> bytes:
    """mesh.obj + its .mtl + textures in one zip (an OBJ is several files)."""
    from trimesh.exchange.obj import export_obj

    text, files = export_obj(mesh, include_texture=True, return_texture=True, mtl_name="mesh.mtl")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("mesh.obj", text)
        for name, data in sorted(files.items()):
            package.writestr(name, data)
    return buffer.getvalue()


def _poisson(positions: np.ndarray, normals: np.ndarray | None, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs in a child process: pymeshlab carries its own native libraries, and with them
    loaded into the service process the test process aborted at exit (glibc heap check)."""
    import pymeshlab

    meshes = pymeshlab.MeshSet()
    if normals is not None:
        meshes.add_mesh(
            pymeshlab.Mesh(
                vertex_matrix=positions.astype(np.float64), v_normals_matrix=normals.astype(np.float64)
            )
        )
    else:
        meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=positions.astype(np.float64)))
        meshes.compute_normal_for_point_clouds()
    meshes.generate_surface_reconstruction_screened_poisson(depth=depth)
    surface = meshes.current_mesh()
    return surface.vertex_matrix().astype(np.float32), surface.face_matrix().astype(np.int64)


def surface_from_points(points: Points, depth: int) -> object:
    """Screened Poisson reconstruction (MeshLab); colours from the nearest input point."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import trimesh
    from scipy.spatial import cKDTree

    if len(points.positions) < 16:
        raise InvalidArgument([("geometry", "a surface needs at least 16 points")])
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        vertices, faces = pool.submit(_poisson, points.positions, points.normals, depth).result()
    if len(faces) == 0:
        raise InvalidArgument([("options.reconstruct_surface", "the reconstruction produced no surface")])
    _, nearest = cKDTree(points.positions).query(vertices, k=1)
    colors = np.clip(np.round(points.colors[nearest] * 255), 0, 255).astype(np.uint8)
    return trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False)
