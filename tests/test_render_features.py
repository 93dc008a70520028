"""render features over gRPC: points and splats, contact sheets, simplification, textures, OBJ,
surface reconstruction, and cancellation stopping the frame loop."""

from __future__ import annotations

import io
import time
import zipfile

import av
import grpc
import numpy as np
import pytest
import trimesh
from PIL import Image
from prometheus_client import REGISTRY

from services.render.geometry import Points, write_points_ply
from tests.test_render import red_box, render
from threegen.chunks import Artifact, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.geometry import export_mesh
from threegen.render.v1 import render_pb2, render_pb2_grpc


def sphere_points(count: int = 4000) -> Points:
    rng = np.random.default_rng(0)
    p = rng.normal(size=(count, 3)).astype(np.float32)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    colors = np.where(p[:, 1:2] > 0, [0.9, 0.1, 0.1], [0.1, 0.2, 0.9]).astype(np.float32)
    return Points(p * 0.5, colors, normals=p.copy())


def splat_ply(count: int = 1500) -> bytes:
    rng = np.random.default_rng(1)
    names = [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
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
    ]
    table = np.zeros(count, dtype=[(n, "f4") for n in names])
    centres = rng.normal(size=(count, 3)) * 0.2
    for axis, key in enumerate("xyz"):
        table[key] = centres[:, axis]
    table["f_dc_0"] = 1.5  # red: 0.5 + 0.282 * 1.5 = 0.92
    table["f_dc_1"] = table["f_dc_2"] = -1.5
    table["opacity"] = 3.0  # sigmoid -> 0.95
    table["scale_0"] = table["scale_1"] = table["scale_2"] = np.log(0.04)
    table["rot_0"] = 1.0
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {count}\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    return header.encode() + table.tobytes()


def covers_centre_not_corners(png: bytes, background=(255, 255, 255)) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w = pixels.shape[:2]
    assert np.abs(pixels[h // 2, w // 2] - background).sum() > 60
    for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
        assert tuple(corner) == background
    return pixels


def test_point_cloud_preview_thumbnail_and_exports(stack) -> None:
    ply = write_points_ply(sphere_points())
    options = render_pb2.RenderOptions(
        exports=[render_pb2.MESH_FORMAT_PLY, render_pb2.MESH_FORMAT_GLB],
        thumbnail=render_pb2.ThumbnailOptions(resolution=96),
        preview=render_pb2.PreviewOptions(seconds=1.0, fps=6, resolution=96),
    )
    files, result, _ = render(stack.render, ply, options, name="points.ply")
    assert files["points.ply"].data == ply
    cloud = trimesh.load(io.BytesIO(files["points.glb"].data), file_type="glb")
    assert sum(len(g.vertices) for g in cloud.geometry.values()) == 4000
    pixels = covers_centre_not_corners(files["thumbnail.png"].data)
    top = pixels[20:40, 40:56].mean(axis=(0, 1))
    assert top[0] > top[2] + 60  # the red upper half faces the raised camera
    with av.open(io.BytesIO(files["preview.mp4"].data)) as video:
        assert sum(1 for _ in video.decode(video=0)) == 6
    assert result.stats.kind == common_pb2.GEOMETRY_KIND_POINT_CLOUD and result.stats.point_count == 4000


def test_gaussian_splats_render_with_their_colour(stack) -> None:
    data = splat_ply()
    options = render_pb2.RenderOptions(
        exports=[render_pb2.MESH_FORMAT_PLY],
        thumbnail=render_pb2.ThumbnailOptions(resolution=96, background="#000000"),
    )
    files, result, _ = render(stack.render, data, options, name="splats.ply")
    pixels = covers_centre_not_corners(files["thumbnail.png"].data, background=(0, 0, 0))
    centre = pixels[40:56, 40:56].mean(axis=(0, 1))
    assert centre[0] > 150 and centre[1] < 60 and centre[2] < 60
    assert files["splats.ply"].data == data
    assert result.stats.kind == common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT and result.stats.point_count == 1500


def test_points_need_a_surface_for_mesh_formats(stack) -> None:
    ply = write_points_ply(sphere_points(6000))
    with pytest.raises(grpc.RpcError) as caught:
        render(
            stack.render, ply, render_pb2.RenderOptions(exports=[render_pb2.MESH_FORMAT_STL]), name="p.ply"
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set reconstruct_surface" in dict(field_violations(caught.value))["options.exports"]
    options = render_pb2.RenderOptions(
        exports=[render_pb2.MESH_FORMAT_STL, render_pb2.MESH_FORMAT_OBJ, render_pb2.MESH_FORMAT_GLB],
        reconstruct_surface=render_pb2.SurfaceOptions(depth=6),
    )
    files, result, _ = render(stack.render, ply, options, name="p.ply")
    surface = trimesh.load(io.BytesIO(files["mesh.stl"].data), file_type="stl")
    assert len(surface.faces) > 500
    assert np.allclose(surface.bounding_box.extents, 1.0, atol=0.15)  # the sphere of radius 0.5
    glb = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    colours = np.asarray(glb.visual.vertex_colors)[:, :3].astype(int)
    top = np.asarray(glb.vertices)[:, 1] > 0.3
    assert (colours[top, 0] > colours[top, 2]).mean() > 0.9  # colours carried from the points
    with zipfile.ZipFile(io.BytesIO(files["mesh_obj.zip"].data)) as package:
        assert "mesh.obj" in package.namelist()
    assert result.stats.kind == common_pb2.GEOMETRY_KIND_MESH and result.stats.face_count == len(
        surface.faces
    )


def test_contact_sheet_is_a_grid_of_different_views(stack) -> None:
    options = render_pb2.RenderOptions(contact_sheet=render_pb2.ContactSheetOptions(views=4, resolution=64))
    files, _, _ = render(stack.render, export_mesh(red_box(), "glb"), options)
    sheet = np.asarray(Image.open(io.BytesIO(files["contact_sheet.png"].data)).convert("RGB")).astype(int)
    assert sheet.shape == (128, 128, 3)
    cells = [sheet[r : r + 64, c : c + 64] for r in (0, 64) for c in (0, 64)]
    coverage = [(np.abs(cell - 255).sum(axis=2) > 60).mean() for cell in cells]
    assert all(c > 0.05 for c in coverage) and abs(coverage[0] - coverage[1]) > 0.02


def test_simplify_by_ratio_and_by_target_keeps_colours(stack) -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4)
    sphere.visual.vertex_colors = np.tile([30, 200, 40, 255], (len(sphere.vertices), 1)).astype(np.uint8)
    for simplify, bound in (
        (render_pb2.SimplifyOptions(ratio=0.9), 600),
        (render_pb2.SimplifyOptions(target_faces=100), 100),
    ):
        options = render_pb2.RenderOptions(exports=[render_pb2.MESH_FORMAT_GLB], simplify=simplify)
        files, result, _ = render(stack.render, export_mesh(sphere, "glb"), options)
        mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
        assert 50 <= len(mesh.faces) <= bound == bound and result.stats.face_count == len(mesh.faces)
        colours = np.asarray(mesh.visual.vertex_colors)[:, :3]
        assert np.abs(colours.mean(axis=0) - [30, 200, 40]).max() < 2


def textured_box(size: int = 512) -> trimesh.Trimesh:
    box = trimesh.creation.box()
    rng = np.random.default_rng(2)
    texture = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    box.visual = trimesh.visual.TextureVisuals(uv=rng.random((len(box.vertices), 2)), image=texture)
    return box


def test_texture_size_limit_applies_to_glb_and_obj(stack) -> None:
    options = render_pb2.RenderOptions(
        exports=[render_pb2.MESH_FORMAT_GLB, render_pb2.MESH_FORMAT_OBJ], texture_size_limit=128
    )
    files, _, _ = render(stack.render, export_mesh(textured_box(), "glb"), options)
    mesh = trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh")
    image = mesh.visual.material.baseColorTexture
    assert max(image.size) == 128
    with zipfile.ZipFile(io.BytesIO(files["mesh_obj.zip"].data)) as package:
        names = package.namelist()
        assert {"mesh.obj", "mesh.mtl"} <= set(names)
        textures = [n for n in names if n.endswith(".png")]
        assert textures and Image.open(io.BytesIO(package.read(textures[0]))).size == (128, 128)


def test_declared_kind_must_match_the_file(stack) -> None:
    def requests():
        params = render_pb2.RenderParams(
            kind=common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT,
            options=render_pb2.RenderOptions(exports=[render_pb2.MESH_FORMAT_GLB]),
        )
        yield render_pb2.RenderRequest(params=params)
        for chunk in iter_chunks(Artifact("mesh.glb", export_mesh(red_box(), "glb"))):
            yield render_pb2.RenderRequest(geometry=chunk)

    with stack.render.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        list(render_pb2_grpc.RenderServiceStub(channel).Render(requests(), timeout=30))
    assert "the file holds GEOMETRY_KIND_MESH" in dict(field_violations(caught.value))["params.kind"]


def test_cancel_stops_the_frame_loop(stack) -> None:
    before = REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "render"}) or 0.0

    def requests():
        options = render_pb2.RenderOptions(
            preview=render_pb2.PreviewOptions(seconds=20, fps=60, resolution=512)
        )
        yield render_pb2.RenderRequest(params=render_pb2.RenderParams(options=options))
        for chunk in iter_chunks(Artifact("mesh.glb", export_mesh(red_box(), "glb"))):
            yield render_pb2.RenderRequest(geometry=chunk)

    with stack.render.channel() as channel:
        call = render_pb2_grpc.RenderServiceStub(channel).Render(requests(), timeout=300)
        for response in call:
            if response.WhichOneof("event") == "progress" and response.progress.step == "frames":
                break
        call.cancel()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and stack.render.runtime.admission.running:
        time.sleep(0.02)
    assert stack.render.runtime.admission.running == 0  # 1200 frames would take minutes
    after = REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "render"})
    assert after == before + 1
