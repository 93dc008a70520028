"""Geometry -> exports, thumbnails, contact sheets and turntable MP4s (no gRPC here).

Meshes are drawn by pyrender offscreen (EGL or OSMesa); point clouds and Gaussian splats by
the torch splat renderer. OpenGL contexts belong to the thread that made them, so each worker
thread keeps its own offscreen renderer.
"""

from __future__ import annotations

import concurrent.futures
import math
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.render.geometry import Points, load_geometry, sniff_format
from services.render.gl import read_color_only
from services.render.meshes import limit_textures, obj_package, simplify, surface_from_points
from services.render.params import ContactSheetParams, PreviewParams, RenderPlan, ThumbnailParams
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument
from threegen.geometry import Stats, export_mesh, mesh_stats
from threegen.images import encode_png
from threegen.runtime.work import Reporter
from threegen.stopwatch import Laps

YFOV = math.radians(40.0)
SHARP_EDGE_FACE_LIMIT = 20_000
MESH_ONLY_EXPORTS = ("obj", "stl")


@dataclass
class RenderJob:
    data: bytes
    plan: RenderPlan
    name: str = "geometry"
    kind: int = common_pb2.GEOMETRY_KIND_UNSPECIFIED
    crf: int = 23


@dataclass
class RenderOutput:
    artifacts: list[Artifact]
    stats: Stats
    timings: list[tuple[str, float]]
    frame_count: int = 0


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(4)
    m[0, 0], m[0, 2], m[2, 0], m[2, 2] = c, s, -s, c
    return m


def area_weighted_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals: the sum of the adjacent faces' cross products (so weighted by area).

    trimesh's default (angle-weighted) took 100-400 ms on a 300k-face marching-cubes mesh,
    most of a turntable's set-up; this is about 10 ms and looks the same on smooth surfaces.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    corners = vertices[faces]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    index = faces.reshape(-1)
    columns = [np.bincount(index, np.repeat(cross[:, axis], 3), len(vertices)) for axis in range(3)]
    summed = np.stack(columns, axis=1)
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    return summed / np.where(length > 0, length, 1.0)


def shading_mesh(mesh: object) -> object:
    """The mesh with vertices split where faces meet at a sharp angle (keeps colours).

    Finding sharp edges costs about 1 s per 100k faces; large meshes (marching-cubes output)
    are smooth anyway, so they are shaded as they are.
    """
    if len(mesh.faces) > SHARP_EDGE_FACE_LIMIT:  # type: ignore[attr-defined]
        if "vertex_normals" not in mesh._cache:  # type: ignore[attr-defined]
            mesh.vertex_normals = area_weighted_normals(mesh.vertices, mesh.faces)  # type: ignore[attr-defined]
        return mesh
    try:
        return mesh.smooth_shaded  # type: ignore[attr-defined]
    except Exception:  # degenerate meshes: fall back to the mesh as it is
        return mesh


class Stage:
    """A pyrender scene holding one mesh, framed to fill the view, lit from the camera and above."""

    def __init__(self, mesh: object, background: tuple[float, float, float], elevation_deg: float):
        import pyrender

        vertices = np.asarray(mesh.vertices)  # type: ignore[attr-defined]
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        self.center = (lo + hi) / 2.0
        radius = float(np.linalg.norm(vertices - self.center, axis=1).max()) or 1.0
        distance = radius / math.sin(YFOV / 2.0) * 1.05
        self.scene = pyrender.Scene(bg_color=[*background, 1.0], ambient_light=[0.25, 0.25, 0.25])
        # Smooth shading, but with vertices split along sharp edges so boxes keep crisp corners.
        self.node = self.scene.add(pyrender.Mesh.from_trimesh(shading_mesh(mesh), smooth=True))
        elevation = math.radians(elevation_deg)
        eye = np.array([0.0, distance * math.sin(elevation), distance * math.cos(elevation)])
        camera_pose = look_at(eye, np.zeros(3), np.array([0.0, 1.0, 0.0]))
        camera = pyrender.PerspectiveCamera(
            yfov=YFOV, aspectRatio=1.0, znear=distance * 0.01, zfar=distance * 4
        )
        self.scene.add(camera, pose=camera_pose)
        self.scene.add(pyrender.DirectionalLight(intensity=1.2), pose=camera_pose)
        key = look_at(np.array([-1.0, 2.0, 1.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
        self.scene.add(pyrender.DirectionalLight(intensity=1.8), pose=key)

    def turn(self, angle: float) -> None:
        centre = np.eye(4)
        centre[:3, 3] = -self.center
        self.scene.set_pose(self.node, rotation_y(angle) @ centre)


class MeshView:
    """A mesh stage bound to this thread's offscreen renderer."""

    def __init__(self, stage: Stage, renderer: Renderer):
        self.stage = stage
        self.renderer = renderer

    def turn(self, angle: float) -> None:
        self.stage.turn(angle)

    def draw(self, size: int) -> np.ndarray:
        return self.renderer.draw(self.stage, size)


class Renderer:
    """Per-thread offscreen renderers, reused across requests."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _offscreen(self, size: int) -> object:
        import pyrender

        renderer = getattr(self._local, "renderer", None)
        if renderer is None:
            renderer = pyrender.OffscreenRenderer(size, size)
            read_color_only(renderer)
            self._local.renderer = renderer
        renderer.viewport_width = size
        renderer.viewport_height = size
        return renderer

    def draw(self, stage: Stage, size: int) -> np.ndarray:
        color, _ = self._offscreen(size).render(stage.scene)  # type: ignore[attr-defined]
        return np.ascontiguousarray(color[..., :3])

    def view(self, geometry: object, background: tuple[float, float, float], elevation_deg: float) -> object:
        """Something with turn(angle) and draw(size) -> (size, size, 3) uint8."""
        if isinstance(geometry, Points):
            from services.render.splats import SplatStage

            return SplatStage(geometry, background, elevation_deg)
        return MeshView(Stage(geometry, background, elevation_deg), self)

    def thumbnail(self, geometry: object, params: ThumbnailParams) -> bytes:
        view = self.view(geometry, params.background, params.elevation_deg)
        view.turn(math.radians(params.azimuth_deg))  # type: ignore[attr-defined]
        return encode_png(view.draw(params.resolution))  # type: ignore[attr-defined]

    def contact_sheet(self, geometry: object, params: ContactSheetParams, reporter: Reporter) -> bytes:
        view = self.view(geometry, params.background, params.elevation_deg)
        columns = math.ceil(math.sqrt(params.views))
        rows = math.ceil(params.views / columns)
        size = params.resolution
        sheet = np.empty((rows * size, columns * size, 3), dtype=np.uint8)
        sheet[:] = np.round(np.array(params.background) * 255).astype(np.uint8)
        for index in range(params.views):
            view.turn(2.0 * math.pi * index / params.views)  # type: ignore[attr-defined]
            row, column = divmod(index, columns)
            sheet[row * size : (row + 1) * size, column * size : (column + 1) * size] = view.draw(size)  # type: ignore[attr-defined]
            reporter.progress("contact_sheet", (index + 1) / params.views, f"view {index + 1}/{params.views}")
        return encode_png(sheet)

    def turntable(
        self,
        geometry: object,
        params: PreviewParams,
        crf: int,
        reporter: Reporter,
        lap: Callable[[str], None] = lambda step: None,
    ) -> tuple[bytes, int]:
        """Render one full turn and encode it as H.264 in an MP4 that browsers play.
        `lap(step)` marks the end of each part: scene set-up, drawing, the encoder's tail."""
        view = self.view(geometry, params.background, params.elevation_deg)
        lap("preview_scene")
        # faststart (index first, so browsers play while downloading) rewrites the file at
        # the end, which needs a real file rather than a memory buffer.
        with tempfile.TemporaryDirectory(prefix="threegen-mp4-") as scratch:
            path = Path(scratch) / "preview.mp4"
            self._encode(view, params, crf, reporter, path, lap)
            video = path.read_bytes()
        lap("preview_encode")
        return video, params.frames

    def _encode(
        self,
        view: object,
        params: PreviewParams,
        crf: int,
        reporter: Reporter,
        path: Path,
        lap: Callable[[str], None],
    ) -> None:
        """Draw frames here while another thread encodes them (libav releases the GIL), so the
        H.264 encode overlaps the drawing instead of following each frame."""
        import queue

        import av

        frames = params.frames
        pending: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=8)
        failure: list[BaseException] = []

        def encode() -> None:
            try:
                with av.open(
                    str(path), mode="w", format="mp4", options={"movflags": "+faststart"}
                ) as container:
                    stream = container.add_stream("libx264", rate=params.fps)
                    stream.width = stream.height = params.resolution
                    stream.pix_fmt = "yuv420p"
                    # zerolatency: no lookahead or frame threads holding frames back, so each
                    # frame is encoded while the next is drawn and nothing is left at the end.
                    stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
                    while (image := pending.get()) is not None:
                        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                            container.mux(packet)
                    for packet in stream.encode():
                        container.mux(packet)
            except BaseException as exc:  # reported to the drawing thread
                failure.append(exc)
                while pending.get() is not None:  # drain so the drawer never blocks
                    pass

        encoder = threading.Thread(target=encode, name="h264-encoder", daemon=True)
        encoder.start()
        report_every = max(1, frames // 16)
        try:
            for index in range(frames):
                view.turn(2.0 * math.pi * index / frames)  # type: ignore[attr-defined]
                pending.put(view.draw(params.resolution))  # type: ignore[attr-defined]
                if (index + 1) % report_every == 0 or index + 1 == frames:
                    reporter.progress("frames", (index + 1) / frames, f"frame {index + 1}/{frames}")
            lap("preview_frames")
        finally:
            pending.put(None)
            encoder.join()
        if failure:
            raise failure[0]


def point_exports(points: Points, formats: list[str]) -> list[Artifact]:
    import trimesh

    stem = "splats" if points.kind == common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT else "points"
    artifacts = []
    for file_type in formats:
        if file_type == "ply":
            artifacts.append(Artifact(f"{stem}.ply", points.source))
        elif file_type == "glb":
            colors = np.clip(np.round(points.colors * 255), 0, 255).astype(np.uint8)
            cloud = trimesh.PointCloud(points.positions, colors=colors)
            artifacts.append(Artifact(f"{stem}.glb", export_mesh(cloud, "glb")))
    return artifacts


def mesh_exports(mesh: object, formats: list[str], source: tuple[str, bytes] | None = None) -> list[Artifact]:
    """`source` (format, bytes): the file the mesh was read from, when nothing changed it since;
    a request for that same format gets those bytes back rather than a fresh export."""
    artifacts = []
    for file_type in formats:
        if source is not None and file_type == source[0] and file_type != "obj":
            artifacts.append(Artifact(f"mesh.{file_type}", source[1]))
        elif file_type == "obj":
            artifacts.append(Artifact("mesh_obj.zip", obj_package(mesh)))
        else:
            artifacts.append(Artifact(f"mesh.{file_type}", export_mesh(mesh, file_type)))
    return artifacts


class RenderEngine:
    def __init__(self) -> None:
        self.renderer = Renderer()
        self._stats_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="render-stats")

    def run(self, job: RenderJob, reporter: Reporter) -> RenderOutput:
        plan = job.plan
        lap = Laps()

        geometry = loaded = load_geometry(job.data, job.name, job.kind)
        reporter.progress("load", 0.05)
        lap("load")
        # The watertight check sorts every edge (~20 ms at 300k faces): done beside the frames.
        pending_stats = self._stats_pool.submit(
            lambda: loaded.stats() if isinstance(loaded, Points) else mesh_stats(loaded)
        )
        artifacts: list[Artifact] = []
        if isinstance(geometry, Points):
            if plan.surface_depth:
                mesh = surface_from_points(geometry, plan.surface_depth)
                reporter.progress("surface", 0.1, f"{len(mesh.faces)} faces")  # type: ignore[attr-defined]
                lap("surface")
                geometry = mesh
            else:
                needing_mesh = [f.upper() for f in plan.exports if f in MESH_ONLY_EXPORTS]
                if needing_mesh:
                    raise InvalidArgument(
                        [
                            (
                                "options.exports",
                                f"{', '.join(needing_mesh)} needs a mesh; the input is a "
                                f"{common_pb2.GeometryKind.Name(geometry.kind)}: set reconstruct_surface",
                            )
                        ]
                    )
                artifacts += point_exports(geometry, plan.exports)
        if not isinstance(geometry, Points):
            if plan.simplify is not None:
                before = len(geometry.faces)  # type: ignore[attr-defined]
                geometry = simplify(geometry, plan.simplify)
                reporter.progress("simplify", 0.12, f"{before} -> {len(geometry.faces)} faces")  # type: ignore[attr-defined]
                lap("simplify")
            unchanged = geometry is loaded and not (
                plan.texture_size_limit and geometry.visual.kind == "texture"  # type: ignore[attr-defined]
            )
            source = (sniff_format(job.data, job.name), job.data) if unchanged else None
            geometry = limit_textures(geometry, plan.texture_size_limit)
            artifacts += mesh_exports(geometry, plan.exports, source)
        if plan.exports:
            reporter.progress("export", 0.15)
            lap("export")
        if plan.thumbnail is not None:
            artifacts.append(Artifact("thumbnail.png", self.renderer.thumbnail(geometry, plan.thumbnail)))
            reporter.progress("thumbnail", 0.2)
            lap("thumbnail")
        if plan.contact_sheet is not None:
            sheet = self.renderer.contact_sheet(geometry, plan.contact_sheet, reporter.span(0.2, 0.3))
            artifacts.append(Artifact("contact_sheet.png", sheet))
            lap("contact_sheet")
        frame_count = 0
        if plan.preview is not None:
            video, frame_count = self.renderer.turntable(
                geometry, plan.preview, job.crf, reporter.span(0.3, 1.0), lap
            )
            artifacts.append(Artifact("preview.mp4", video))
        if geometry is loaded:
            stats = pending_stats.result()
        else:  # simplified or surfaced: the stats describe what was exported and drawn
            stats = geometry.stats() if isinstance(geometry, Points) else mesh_stats(geometry)
        lap("stats")
        reporter.progress("done", 1.0)
        return RenderOutput(artifacts, stats, lap.timings, frame_count)
