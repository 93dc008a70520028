"""Hunyuan3D-2 as a recon family: image -> mesh, optionally textured (GLB)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh

from services.recon import meshclean
from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.families.hunyuan3d import profiles
from services.recon.families.hunyuan3d.layout import paint_files, shape_files
from services.recon.families.hunyuan3d.shape import ShapeModel, ShapeParams
from services.recon.families.placement import Mode
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument, ResourceExhausted, Violations
from threegen.geometry import export_mesh, stats_from_arrays
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.recon.hunyuan3d")
GIB = 1 << 30
MARGIN_BYTES = 512 << 20  # left free for the CUDA allocator's own fragmentation


@dataclass
class Hunyuan3DParams:
    texture: bool
    texture_explicit: bool
    profile: int
    shape: ShapeParams


class Hunyuan3DFamily(Family):
    name = "hunyuan3d"
    family = common_pb2.FAMILY_HUNYUAN3D
    options_field = "hunyuan3d"

    @property
    def source(self) -> str:
        return f"{self.settings.hunyuan3d_model}/{self.settings.hunyuan3d_subfolder}"

    @property
    def turbo(self) -> bool:
        return self.settings.hunyuan3d_subfolder.endswith("turbo")

    def parse_options(self, options: Any | None, violations: Violations) -> Hunyuan3DParams:
        shape = ShapeParams(steps=5 if self.turbo else 30)
        params = Hunyuan3DParams(True, False, self.settings.hunyuan3d_memory_profile, shape)
        if options is None:
            return params
        if options.HasField("texture"):
            params.texture, params.texture_explicit = options.texture, True
            if options.texture and not self.settings.hunyuan3d_paint_model:
                violations.add(
                    "options.hunyuan3d.texture",
                    "this deployment has no texture models (THREEGEN_RECON_HUNYUAN3D_PAINT_MODEL is empty)",
                )
        if options.memory_profile:
            violations.in_range(options.memory_profile, 1, 5, "options.hunyuan3d.memory_profile")
            params.profile = options.memory_profile
        if options.steps:
            violations.in_range(options.steps, 1, 100, "options.hunyuan3d.steps")
            shape.steps = options.steps
        if options.guidance_scale:
            violations.in_range(options.guidance_scale, 1.0, 20.0, "options.hunyuan3d.guidance_scale")
            shape.guidance_scale = options.guidance_scale
        if options.octree_resolution:
            violations.in_range(options.octree_resolution, 64, 512, "options.hunyuan3d.octree_resolution")
            shape.octree_resolution = options.octree_resolution
        return params

    def load(self) -> None:
        resting = profiles.MODES[self.settings.hunyuan3d_memory_profile]
        self.shape = ShapeModel(
            shape_files(self.settings.hunyuan3d_model, self.settings.hunyuan3d_subfolder),
            self.device,
            resting,
        )
        self.painter = None
        if self.settings.hunyuan3d_paint_model:
            from services.recon.families.hunyuan3d.paint import Painter, PaintSettings

            self.painter = Painter(
                paint_files(self.settings.hunyuan3d_paint_model),
                self.device,
                resting,
                PaintSettings(
                    view_size=self.settings.hunyuan3d_view_size,
                    render_size=self.settings.hunyuan3d_render_size,
                    texture_size=self.settings.hunyuan3d_texture_size,
                    delight_steps=self.settings.hunyuan3d_delight_steps,
                    paint_steps=self.settings.hunyuan3d_paint_steps,
                ),
            )
        self.memory_bytes = sum(c.bytes for c in self.components().values())

    def components(self) -> dict:
        found = dict(self.shape.stager.components)
        if self.painter is not None:
            found.update(self.painter.stager.components)
        return found

    def check_fits(self, params: Hunyuan3DParams) -> profiles.Estimate | None:
        """Refuse, before any work, a request whose estimated peak exceeds the GPU's free memory."""
        if not self.device.startswith("cuda"):
            return None
        components = self.components()
        texture = params.texture and self.painter is not None
        guess = profiles.estimate(params.profile, components, params.shape.octree_resolution, texture)
        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        on_gpu = sum(c.bytes for c in components.values() if c.on_gpu)
        needed = guess.peak_bytes - on_gpu
        if needed > free - MARGIN_BYTES:
            hint = (
                f"try memory_profile {params.profile + 1}-5"
                if params.profile < 5
                else "lower octree_resolution or turn texture off"
            )
            need, have = guess.peak_bytes / GIB, (free + on_gpu) / GIB
            raise ResourceExhausted(
                f"hunyuan3d memory_profile {params.profile} needs about {need:.1f} GiB of GPU memory at "
                f"octree_resolution {params.shape.octree_resolution}{' with texture' if texture else ''}; "
                f"{have:.1f} GiB of {total / GIB:.1f} GiB is available to it; {hint}"
            )
        return guess

    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        params: Hunyuan3DParams = job.options
        assert job.image is not None
        self.check_fits(params)
        params.shape.seed = job.seed
        params.shape.num_chunks = profiles.NUM_CHUNKS[params.profile]
        modes = profiles.MODES[params.profile]
        try:
            return self._run(job, params, modes, reporter)
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise ResourceExhausted(
                f"hunyuan3d ran out of GPU memory with memory_profile {params.profile}: "
                f"{str(exc).splitlines()[0]}; retry with a higher memory_profile"
            ) from exc

    def _run(self, job: ReconInput, params: Hunyuan3DParams, modes: dict[str, Mode], reporter: Reporter):
        texture = params.texture and self.painter is not None
        shape_part = reporter.span(0.0, 0.45 if texture else 1.0)
        result = self.shape.generate(job.image, params.shape, modes, shape_part)
        timings = list(result.timings)
        started = time.perf_counter()
        mesh = trimesh.Trimesh(result.vertices, result.faces, process=False)
        before = len(mesh.faces)
        mesh = self._clean(mesh)
        timings.append(("clean_mesh", time.perf_counter() - started))
        reporter.progress("clean_mesh", 0.5 if texture else 0.99, f"{before} -> {len(mesh.faces)} faces")
        if texture:
            mesh, painted = self.painter.texture(mesh, job.image, modes, reporter.span(0.5, 1.0))
            timings += painted
        elif params.texture and self.painter is None:
            reporter.progress("texture", 1.0, "texture skipped: this deployment has no texture models")
        started = time.perf_counter()
        glb = export_mesh(mesh, "glb")
        timings.append(("export", time.perf_counter() - started))
        stats = stats_from_arrays(mesh.vertices, mesh.faces)
        return ReconOutput([Artifact("mesh.glb", glb)], stats, timings)

    def _clean(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        """Upstream's post-processing steps: floaters, degenerate faces, a face budget."""
        if len(mesh.faces) == 0:
            raise InvalidArgument([("image", "the model produced an empty mesh for this image")])
        vertices, faces = meshclean.clean(
            np.asarray(mesh.vertices), np.asarray(mesh.faces), self.settings.hunyuan3d_max_faces
        )
        return trimesh.Trimesh(vertices, faces, process=False)
