"""TripoSR as a recon family: image -> mesh with vertex colours (GLB)."""

from __future__ import annotations

import time
from typing import Any

import torch
import trimesh

from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.families.triposr.engine import TripoSREngine, TripoSRParams
from services.recon.families.triposr.loader import load
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import Violations
from threegen.geometry import export_mesh, stats_from_arrays
from threegen.runtime.work import Reporter
from threegen.weights import module_bytes


class TripoSRFamily(Family):
    name = "triposr"
    family = common_pb2.FAMILY_TRIPOSR
    options_field = "triposr"

    @property
    def source(self) -> str:
        return self.settings.triposr_model

    def parse_options(self, options: Any | None, violations: Violations) -> TripoSRParams:
        params = TripoSRParams()
        if options is None:
            return params
        if options.mc_resolution:
            violations.in_range(options.mc_resolution, 32, 512, "options.triposr.mc_resolution")
            params.mc_resolution = options.mc_resolution
        if options.foreground_ratio:
            violations.in_range(options.foreground_ratio, 0.5, 1.0, "options.triposr.foreground_ratio")
            params.foreground_ratio = options.foreground_ratio
        if options.HasField("density_threshold"):
            violations.in_range(options.density_threshold, 0.0, 1000.0, "options.triposr.density_threshold")
            params.density_threshold = options.density_threshold
        return params

    def load(self) -> None:
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        loaded = load(self.source, device=self.device, dtype=dtype)
        self.engine = TripoSREngine(loaded, chunk_points=self.settings.triposr_chunk_points)
        self.memory_bytes = module_bytes(loaded.model)

    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        assert job.image is not None
        mesh_out = self.engine.reconstruct(job.image, job.options, reporter)
        started = time.perf_counter()
        mesh = trimesh.Trimesh(
            mesh_out.vertices, mesh_out.faces, vertex_colors=mesh_out.colors, process=False
        )
        artifact = Artifact("mesh.glb", export_mesh(mesh, "glb"))  # with its digest
        stats = stats_from_arrays(mesh_out.vertices, mesh_out.faces, watertight=mesh_out.closed)
        timings = [*mesh_out.timings, ("export", time.perf_counter() - started)]
        return ReconOutput([artifact], stats, timings)
