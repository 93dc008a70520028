"""TRELLIS as a recon family: image or text -> textured GLB, or Gaussian splats (PLY)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from services.recon import meshclean, texturebake
from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.families.trellis import loader
from services.recon.families.trellis.engine import Stage, TrellisEngine, TrellisParams
from services.recon.gaussians import to_ply
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import ResourceExhausted, Violations
from threegen.geometry import export_mesh, points_stats, stats_from_arrays
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.recon.trellis")
GLB_FROM_TRELLIS = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)  # z-up -> y-up, row vectors


@dataclass
class TrellisRequest:
    params: TrellisParams
    simplify: float = 0.95
    texture_size: int = 1024
    with_gaussians: bool = False


class TrellisFamily(Family):
    name = "trellis"
    family = common_pb2.FAMILY_TRELLIS
    options_field = "trellis"
    accepts_text = True
    outputs = (common_pb2.GEOMETRY_KIND_MESH, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)

    @property
    def source(self) -> str:
        text = self.settings.trellis_text_model
        return self.settings.trellis_model + (f" + {text}" if text else "")

    def parse_options(self, options: Any | None, violations: Violations) -> TrellisRequest:
        request = TrellisRequest(TrellisParams())
        if options is None:
            return request
        if options.HasField("simplify"):
            violations.in_range(options.simplify, 0.0, 0.99, "options.trellis.simplify")
            request.simplify = options.simplify
        if options.texture_size:
            violations.in_range(options.texture_size, 128, 4096, "options.trellis.texture_size")
            request.texture_size = options.texture_size
        request.with_gaussians = options.with_gaussians
        stages = {}
        for stage, steps, guidance in (
            ("sparse_structure", options.sparse_structure_steps, options.sparse_structure_guidance),
            ("slat", options.slat_steps, options.slat_guidance),
        ):
            if steps:
                violations.in_range(steps, 1, 100, f"options.trellis.{stage}_steps")
            if guidance:
                violations.in_range(guidance, 0.0, 20.0, f"options.trellis.{stage}_guidance")
            stages[stage] = (steps, guidance)
        request.overrides = stages  # type: ignore[attr-defined]
        return request

    def load(self) -> None:
        shared: dict[str, torch.nn.Module] = {}
        self.engines: dict[str, TrellisEngine] = {}
        files = loader.find(self.settings.trellis_model)
        self.engines[files.kind] = TrellisEngine(
            files, self.device, self.settings.trellis_dinov2, shared=shared
        )
        if self.settings.trellis_text_model:
            text = loader.find(self.settings.trellis_text_model, setting="THREEGEN_RECON_TRELLIS_TEXT_MODEL")
            self.engines[text.kind] = TrellisEngine(
                text, self.device, clip_source=self.settings.trellis_clip, shared=shared
            )
        self.accepts_image = "image" in self.engines
        self.accepts_text = "text" in self.engines
        modules = {id(m): m for engine in self.engines.values() for m in engine.modules()}
        self.memory_bytes = sum(
            t.numel() * t.element_size() for m in modules.values() for t in [*m.parameters(), *m.buffers()]
        )

    def _stages(self, engine: TrellisEngine, request: TrellisRequest) -> None:
        for stage, (steps, guidance) in getattr(request, "overrides", {}).items():
            base = engine.defaults[stage]
            chosen = Stage(
                steps or base.steps, guidance or base.cfg_strength, base.cfg_interval, base.rescale_t
            )
            setattr(request.params, stage, chosen)

    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        request: TrellisRequest = job.options
        kind = "image" if job.image is not None else "text"
        engine = self.engines.get(kind)
        if engine is None:
            from threegen.errors import InvalidArgument

            field = "image" if kind == "image" else "prompt"
            raise InvalidArgument([(field, f"this deployment's TRELLIS has no {kind} model")])
        self._stages(engine, request)
        request.params.seed = job.seed
        splat_output = job.output == common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT
        request.params.want_mesh = not splat_output
        request.params.want_gaussians = splat_output or request.with_gaussians
        try:
            result = engine.run(job.image, job.prompt, request.params, reporter.span(0.0, 0.9))
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise ResourceExhausted(f"trellis ran out of GPU memory: {str(exc).splitlines()[0]}") from exc
        timings = list(result.timings)
        artifacts: list[Artifact] = []
        stats = None
        if result.mesh is not None:
            started = time.perf_counter()
            mesh = result.mesh
            target = max(100, int(len(mesh.faces) * (1.0 - request.simplify)))
            vertices, faces = meshclean.remove_degenerate(mesh.vertices, mesh.faces)
            colors = None
            if mesh.colors is not None:  # carry colours through decimation by nearest original vertex
                colors = mesh.colors
            simplified_v, simplified_f = meshclean.decimate(vertices, faces, target)
            if colors is not None:
                colors = _nearest_colors(mesh.vertices, mesh.colors, simplified_v)
            simplified_v = simplified_v @ GLB_FROM_TRELLIS
            timings.append(("simplify", time.perf_counter() - started))
            reporter.progress("simplify", 0.93, f"{len(faces)} -> {len(simplified_f)} faces")
            started = time.perf_counter()
            if colors is not None:
                textured = texturebake.bake(
                    simplified_v, simplified_f, colors, request.texture_size, self.device
                )
            else:
                import trimesh

                textured = trimesh.Trimesh(simplified_v, simplified_f, process=False)
            artifacts.append(Artifact("mesh.glb", export_mesh(textured, "glb")))
            timings.append(("bake_texture", time.perf_counter() - started))
            stats = stats_from_arrays(simplified_v, simplified_f)
        if result.splats is not None:
            started = time.perf_counter()
            artifacts.append(Artifact("gaussians.ply", to_ply(result.splats)))
            timings.append(("write_ply", time.perf_counter() - started))
            if stats is None:
                stats = points_stats(result.splats.xyz, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
        assert stats is not None
        return ReconOutput(artifacts, stats, timings)


def _nearest_colors(source: np.ndarray, colors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    _, index = cKDTree(source).query(targets)
    return colors[index]
