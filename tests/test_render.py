"""render over gRPC: known primitives, pixels checked, video decoded, exports round-tripped."""

from __future__ import annotations

import io

import av
import numpy as np
import trimesh
from PIL import Image

from tests.helpers import collect
from threegen.chunks import Artifact, iter_chunks
from threegen.geometry import export_mesh
from threegen.render.v1 import render_pb2, render_pb2_grpc


def render(server, mesh_bytes: bytes, options: render_pb2.RenderOptions, name: str = "mesh.glb"):
    def requests():
        yield render_pb2.RenderRequest(params=render_pb2.RenderParams(options=options))
        for chunk in iter_chunks(Artifact(name, mesh_bytes), chunk_bytes=64 * 1024):
            yield render_pb2.RenderRequest(geometry=chunk)

    with server.channel() as channel:
        return collect(render_pb2_grpc.RenderServiceStub(channel).Render(requests(), timeout=120))


def red_box() -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.3))
    box.visual.vertex_colors = np.tile([220, 30, 30, 255], (len(box.vertices), 1)).astype(np.uint8)
    return box


def test_thumbnail_shows_the_object_in_the_centre_on_the_background(stack) -> None:
    options = render_pb2.RenderOptions(
        thumbnail=render_pb2.ThumbnailOptions(resolution=128, background="#00ff00")
    )
    files, result, _ = render(stack.render, export_mesh(red_box(), "glb"), options)
    pixels = np.asarray(Image.open(io.BytesIO(files["thumbnail.png"].data)).convert("RGB")).astype(int)
    assert pixels.shape == (128, 128, 3)
    centre = pixels[64, 64]
    assert centre[0] > 150 and centre[0] > 2 * centre[1]  # red object, shaded, not washed out
    for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
        assert tuple(corner) == (0, 255, 0)
    assert result.stats.face_count == 12 and result.stats.watertight


def test_turntable_frames_turn_and_decode(stack) -> None:
    options = render_pb2.RenderOptions(preview=render_pb2.PreviewOptions(seconds=1.0, fps=8, resolution=128))
    files, result, progress = render(stack.render, export_mesh(red_box(), "glb"), options)
    with av.open(io.BytesIO(files["preview.mp4"].data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 == result.frame_count
    assert frames[0].shape == (128, 128, 3)
    # A box seen from 0 and 90 degrees covers different areas: the object really turns.
    covered = [(np.abs(f.astype(int) - 255).sum(axis=2) > 60).mean() for f in frames]
    assert abs(covered[0] - covered[2]) > 0.02
    fractions = [p.fraction for p in progress if p.step == "frames"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_exports_round_trip(stack) -> None:
    box = red_box()
    options = render_pb2.RenderOptions(
        exports=[render_pb2.MESH_FORMAT_GLB, render_pb2.MESH_FORMAT_PLY, render_pb2.MESH_FORMAT_STL]
    )
    for source_type in ("glb", "ply"):
        files, _, _ = render(stack.render, export_mesh(box, source_type), options, name=f"in.{source_type}")
        for name, file_type in (("mesh.glb", "glb"), ("mesh.ply", "ply"), ("mesh.stl", "stl")):
            mesh = trimesh.load(io.BytesIO(files[name].data), file_type=file_type, force="mesh")
            assert len(mesh.faces) == 12
            assert np.allclose(mesh.bounds, box.bounds, atol=1e-5)


def test_an_unchanged_mesh_comes_back_as_the_bytes_sent(stack) -> None:
    glb = export_mesh(red_box(), "glb")
    exports = render_pb2.RenderOptions(exports=[render_pb2.MESH_FORMAT_GLB, render_pb2.MESH_FORMAT_PLY])
    files, _, _ = render(stack.render, glb, exports)
    assert files["mesh.glb"].data == glb  # no re-export on the hot path
    assert files["mesh.ply"].data.startswith(b"ply")
    exports.simplify.target_faces = 8  # a changed mesh is exported afresh
    files, _, _ = render(stack.render, glb, exports)
    assert files["mesh.glb"].data != glb
    assert len(trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh").faces) <= 8


def test_a_placed_glb_node_keeps_its_transform(stack) -> None:
    scene = trimesh.Scene()
    scene.add_geometry(red_box(), transform=trimesh.transformations.translation_matrix([5.0, 0.0, 0.0]))
    options = render_pb2.RenderOptions(exports=[render_pb2.MESH_FORMAT_STL])
    files, _, _ = render(stack.render, scene.export(file_type="glb"), options)
    mesh = trimesh.load(io.BytesIO(files["mesh.stl"].data), file_type="stl")
    assert np.allclose(mesh.bounds.mean(axis=0), [5.0, 0.0, 0.0], atol=1e-5)


def test_fast_normals_point_outward_like_trimesh_s() -> None:
    from services.render.engine import area_weighted_normals

    sphere = trimesh.creation.icosphere(subdivisions=4)
    normals = area_weighted_normals(sphere.vertices, sphere.faces)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    assert (np.einsum("ij,ij->i", normals, sphere.vertex_normals) > 0.999).all()
