"""render request options -> engine parameters, validated (pure Python: the gateway uses it too)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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


@dataclass
class ContactSheetParams:
    views: int = 8
    resolution: int = 256
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    elevation_deg: float = 20.0


@dataclass
class SimplifyParams:
    target_faces: int = 0  # keep at most this many faces, or
    ratio: float = 0.0  # remove this fraction of faces (TRELLIS's simplify)


@dataclass
class RenderPlan:
    """Everything a render request asks for, validated."""

    exports: list[str] = field(default_factory=list)
    preview: PreviewParams | None = None
    thumbnail: ThumbnailParams | None = None
    contact_sheet: ContactSheetParams | None = None
    simplify: SimplifyParams | None = None
    texture_size_limit: int = 0
    surface_depth: int = 0  # > 0: reconstruct a mesh from a point cloud at this octree depth


EXPORT_NAMES = {
    render_pb2.MESH_FORMAT_GLB: "glb",
    render_pb2.MESH_FORMAT_PLY: "ply",
    render_pb2.MESH_FORMAT_OBJ: "obj",
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


def validate_options(
    options: render_pb2.RenderOptions, *, max_frames: int, prefix: str = "options"
) -> RenderPlan:
    """RenderOptions -> a RenderPlan, or INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    plan = RenderPlan()
    for index, fmt in enumerate(options.exports):
        name = EXPORT_NAMES.get(fmt)
        if name is None:
            shown = render_pb2.MeshFormat.Name(fmt) if fmt in render_pb2.MeshFormat.values() else str(fmt)
            v.add(f"{prefix}.exports[{index}]", f"{shown} is not supported; use GLB, PLY, OBJ or STL")
        elif name not in plan.exports:
            plan.exports.append(name)
    if options.HasField("preview"):
        p = options.preview
        preview = plan.preview = PreviewParams(
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
        if not any(f.startswith(f"{prefix}.preview.") for f, _ in v.items):  # frames only of valid numbers
            v.check(
                preview.frames <= max_frames,
                f"{prefix}.preview",
                f"seconds x fps gives {preview.frames} frames; the limit is {max_frames}",
            )
    if options.HasField("thumbnail"):
        t = options.thumbnail
        plan.thumbnail = ThumbnailParams(
            resolution=t.resolution or 512,
            background=parse_color(t.background, f"{prefix}.thumbnail.background", v),
            azimuth_deg=t.azimuth_deg,
        )
        v.in_range(plan.thumbnail.resolution, 64, 2048, f"{prefix}.thumbnail.resolution")
    if options.HasField("contact_sheet"):
        c = options.contact_sheet
        plan.contact_sheet = ContactSheetParams(
            views=c.views or 8,
            resolution=c.resolution or 256,
            background=parse_color(c.background, f"{prefix}.contact_sheet.background", v),
        )
        v.in_range(plan.contact_sheet.views, 2, 36, f"{prefix}.contact_sheet.views")
        v.in_range(plan.contact_sheet.resolution, 64, 1024, f"{prefix}.contact_sheet.resolution")
    if options.HasField("simplify"):
        target = options.simplify.WhichOneof("target")
        if target == "target_faces":
            v.check(
                options.simplify.target_faces >= 4, f"{prefix}.simplify.target_faces", "must be at least 4"
            )
            plan.simplify = SimplifyParams(target_faces=options.simplify.target_faces)
        elif target == "ratio":
            v.check(
                0.0 <= options.simplify.ratio < 1.0,
                f"{prefix}.simplify.ratio",
                f"must be between 0 and 1 (the fraction of faces removed), got {options.simplify.ratio:g}",
            )
            plan.simplify = SimplifyParams(ratio=options.simplify.ratio)
        else:
            v.add(f"{prefix}.simplify", "set target_faces or ratio")
    limit = options.texture_size_limit
    v.check(
        limit == 0 or 64 <= limit <= 8192,
        f"{prefix}.texture_size_limit",
        f"must be 0 (keep) or between 64 and 8192, got {limit}",
    )
    plan.texture_size_limit = limit
    if options.HasField("reconstruct_surface"):
        plan.surface_depth = options.reconstruct_surface.depth or 8
        v.in_range(plan.surface_depth, 5, 11, f"{prefix}.reconstruct_surface.depth")
    if not (plan.exports or plan.preview or plan.thumbnail or plan.contact_sheet):
        v.add(prefix, "nothing to produce: ask for exports, a preview, a thumbnail or a contact sheet")
    v.raise_if_any()
    return plan
