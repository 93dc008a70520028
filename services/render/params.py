"""render request options -> engine parameters, validated (pure Python: the gateway uses it too)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from threegen.errors import Violations
from threegen.render.v1 import render_pb2


@dataclass
class PreviewParams:
    seconds: float = 3.0
    fps: int = 16
    resolution: int = 512
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    elevation_deg: float = 20.0

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))


@dataclass
class ThumbnailParams:
    resolution: int = 512
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    azimuth_deg: float = 0.0
    elevation_deg: float = 20.0


EXPORT_NAMES = {
    render_pb2.MESH_FORMAT_GLB: "glb",
    render_pb2.MESH_FORMAT_PLY: "ply",
    render_pb2.MESH_FORMAT_STL: "stl",
}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_color(text: str, field: str, v: Violations) -> tuple[float, float, float]:
    if not text:
        return (1.0, 1.0, 1.0)
    match = _HEX.match(text.strip())
    if not match:
        v.add(field, f'must be a colour like "#ffffff", got {text!r}')
        return (1.0, 1.0, 1.0)
    value = match.group(1)
    return tuple(int(value[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def validate_options(options: render_pb2.RenderOptions, *, max_frames: int, prefix: str = "options"):
    """RenderOptions -> (export names, preview, thumbnail), or INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    exports = []
    for index, fmt in enumerate(options.exports):
        name = EXPORT_NAMES.get(fmt)
        if name is None:
            shown = render_pb2.MeshFormat.Name(fmt) if fmt in render_pb2.MeshFormat.values() else str(fmt)
            v.add(f"{prefix}.exports[{index}]", f"{shown} is not supported; use GLB, PLY or STL")
        elif name not in exports:
            exports.append(name)
    preview = None
    if options.HasField("preview"):
        p = options.preview
        preview = PreviewParams(
            seconds=p.seconds or 3.0,
            fps=p.fps or 16,
            resolution=p.resolution or 512,
            background=parse_color(p.background, f"{prefix}.preview.background", v),
            elevation_deg=p.elevation_deg if p.HasField("elevation_deg") else 20.0,
        )
        v.in_range(preview.seconds, 0.5, 20.0, f"{prefix}.preview.seconds")
        v.in_range(preview.fps, 1, 60, f"{prefix}.preview.fps")
        v.check(
            64 <= preview.resolution <= 2048 and preview.resolution % 2 == 0,
            f"{prefix}.preview.resolution",
            f"must be an even number between 64 and 2048, got {preview.resolution}",
        )
        v.in_range(preview.elevation_deg, -89.0, 89.0, f"{prefix}.preview.elevation_deg")
        v.check(
            preview.frames <= max_frames,
            f"{prefix}.preview",
            f"seconds x fps gives {preview.frames} frames; the limit is {max_frames}",
        )
    thumbnail = None
    if options.HasField("thumbnail"):
        t = options.thumbnail
        thumbnail = ThumbnailParams(
            resolution=t.resolution or 512,
            background=parse_color(t.background, f"{prefix}.thumbnail.background", v),
            azimuth_deg=t.azimuth_deg,
        )
        v.in_range(thumbnail.resolution, 64, 2048, f"{prefix}.thumbnail.resolution")
    if not exports and preview is None and thumbnail is None:
        v.add(prefix, "nothing to produce: ask for exports, a preview or a thumbnail")
    v.raise_if_any()
    return exports, preview, thumbnail
