"""Geometry -> exports, thumbnails and turntable MP4s (pyrender offscreen + H.264 via PyAV).

No gRPC here. OpenGL contexts belong to the thread that made them, so each worker thread
keeps its own offscreen renderer.
"""

from __future__ import annotations

import io
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.render.params import PreviewParams, ThumbnailParams
from threegen.chunks import Artifact
from threegen.errors import InvalidArgument
from threegen.geometry import Stats, export_mesh, mesh_stats
from threegen.images import encode_png
from threegen.runtime.work import Reporter

YFOV = math.radians(40.0)

EXPORT_FILE_TYPES = {"glb": "mesh.glb", "ply": "mesh.ply", "stl": "mesh.stl"}


@dataclass
class RenderJob:
    data: bytes
    name: str = "geometry"
    exports: list[str] = field(default_factory=list)
    preview: PreviewParams | None = None
    thumbnail: ThumbnailParams | None = None
    crf: int = 23


@dataclass
class RenderOutput:
    artifacts: list[Artifact]
    stats: Stats
    timings: list[tuple[str, float]]
    frame_count: int = 0


def sniff_format(data: bytes, name: str = "") -> str:
    if data[:4] == b"glTF":
        return "glb"
    if data[:4] == b"ply\n" or data[:5] == b"ply\r\n":
        return "ply"
    head = data[:4096].lstrip()
    if name.lower().endswith(".obj") or head.startswith((b"v ", b"#", b"o ", b"mtllib", b"g ")):
        return "obj"
    raise InvalidArgument([("geometry", "unrecognised file: expected GLB, PLY or OBJ")])


def load_mesh(data: bytes, name: str = "") -> object:
    import trimesh

    file_type = sniff_format(data, name)
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    except Exception as exc:
        raise InvalidArgument([("geometry", f"could not parse {file_type.upper()}: {exc}")]) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InvalidArgument([("geometry", f"the {file_type.upper()} holds no triangles")])
    if not np.isfinite(mesh.vertices).all():
        raise InvalidArgument([("geometry", "vertex positions contain NaN or infinity")])
    return mesh


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


SHARP_EDGE_FACE_LIMIT = 20_000


def shading_mesh(mesh: object) -> object:
    """The mesh with vertices split where faces meet at a sharp angle (keeps colours).

    Finding sharp edges costs about 1 s per 100k faces; large meshes (marching-cubes output)
    are smooth anyway, so they are shaded as they are.
    """
    if len(mesh.faces) > SHARP_EDGE_FACE_LIMIT:  # type: ignore[attr-defined]
        return mesh
    try:
        return mesh.smooth_shaded  # type: ignore[attr-defined]
    except Exception:  # degenerate meshes: fall back to the mesh as it is
        return mesh


class Stage:
    """A pyrender scene holding one object, framed to fill the view, lit from the camera and above."""

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
        self.scene.add(
            pyrender.PerspectiveCamera(yfov=YFOV, aspectRatio=1.0, znear=distance * 0.01, zfar=distance * 4),
            pose=camera_pose,
        )
        self.scene.add(pyrender.DirectionalLight(intensity=1.2), pose=camera_pose)
        key = look_at(np.array([-1.0, 2.0, 1.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
        self.scene.add(pyrender.DirectionalLight(intensity=1.8), pose=key)

    def turn(self, angle: float) -> None:
        centre = np.eye(4)
        centre[:3, 3] = -self.center
        self.scene.set_pose(self.node, rotation_y(angle) @ centre)


class Renderer:
    """Per-thread offscreen renderers, reused across requests."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _offscreen(self, size: int) -> object:
        import pyrender

        renderer = getattr(self._local, "renderer", None)
        if renderer is None:
            renderer = pyrender.OffscreenRenderer(size, size)
            self._local.renderer = renderer
        renderer.viewport_width = size
        renderer.viewport_height = size
        return renderer

    def draw(self, stage: Stage, size: int) -> np.ndarray:
        color, _ = self._offscreen(size).render(stage.scene)  # type: ignore[attr-defined]
        return np.ascontiguousarray(color[..., :3])

    def thumbnail(self, mesh: object, params: ThumbnailParams) -> bytes:
        from PIL import Image

        stage = Stage(mesh, params.background, params.elevation_deg)
        stage.turn(math.radians(params.azimuth_deg))
        return encode_png(Image.fromarray(self.draw(stage, params.resolution)))

    def turntable(
        self, mesh: object, params: PreviewParams, crf: int, reporter: Reporter
    ) -> tuple[bytes, int]:
        """Render one full turn and encode it as H.264 in an MP4 that browsers play."""
        stage = Stage(mesh, params.background, params.elevation_deg)
        frames = params.frames
        # faststart (index first, so browsers play while downloading) rewrites the file at
        # the end, which needs a real file rather than a memory buffer.
        with tempfile.TemporaryDirectory(prefix="threegen-mp4-") as scratch:
            path = Path(scratch) / "preview.mp4"
            self._encode(stage, params, crf, reporter, path)
            return path.read_bytes(), frames

    def _encode(self, stage: Stage, params: PreviewParams, crf: int, reporter: Reporter, path: Path) -> None:
        import av

        frames = params.frames
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=params.fps)
            stream.width = stream.height = params.resolution
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            report_every = max(1, frames // 16)
            for index in range(frames):
                stage.turn(2.0 * math.pi * index / frames)
                image = self.draw(stage, params.resolution)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
                if (index + 1) % report_every == 0 or index + 1 == frames:
                    reporter.progress("frames", (index + 1) / frames, f"frame {index + 1}/{frames}")
            for packet in stream.encode():
                container.mux(packet)


class RenderEngine:
    def __init__(self) -> None:
        self.renderer = Renderer()

    def run(self, job: RenderJob, reporter: Reporter) -> RenderOutput:
        timings: list[tuple[str, float]] = []
        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings.append((step, now - clock))
            clock = now

        mesh = load_mesh(job.data, job.name)
        reporter.progress("load", 0.05)
        lap("load")
        artifacts: list[Artifact] = []
        for file_type in job.exports:
            artifacts.append(Artifact(EXPORT_FILE_TYPES[file_type], export_mesh(mesh, file_type)))
        if job.exports:
            reporter.progress("export", 0.1)
            lap("export")
        if job.thumbnail is not None:
            artifacts.append(Artifact("thumbnail.png", self.renderer.thumbnail(mesh, job.thumbnail)))
            reporter.progress("thumbnail", 0.15)
            lap("thumbnail")
        frame_count = 0
        if job.preview is not None:
            video, frame_count = self.renderer.turntable(mesh, job.preview, job.crf, reporter.span(0.15, 1.0))
            artifacts.append(Artifact("preview.mp4", video))
            lap("turntable")
        reporter.progress("done", 1.0)
        return RenderOutput(artifacts, mesh_stats(mesh), timings, frame_count)
