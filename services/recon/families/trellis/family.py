"""TRELLIS as a recon family: image or text -> textured GLB, or Gaussian splats (PLY)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.families.stages import FlowRequest
from services.recon.families.trellis import loader
from services.recon.families.trellis.engine import TrellisEngine
from services.recon.families.trellis.meshing import finish_mesh
from services.recon.gaussians import ply_artifact
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import Violations
from threegen.geometry import points_stats
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.recon.trellis")


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

    def parse_options(self, options: Any | None, violations: Violations) -> FlowRequest:
        return FlowRequest.parse(options, "options.trellis", violations)

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
        self.memory_bytes = self.resident_bytes(m for e in self.engines.values() for m in e.modules())

    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        request: FlowRequest = job.options
        kind = "image" if job.image is not None else "text"
        engine = self.engines.get(kind)
        if engine is None:
            from threegen.errors import InvalidArgument

            field = "image" if kind == "image" else "prompt"
            raise InvalidArgument([(field, f"this deployment's TRELLIS has no {kind} model")])
        request.overrides.apply(request.params, engine.defaults)
        request.params.seed = job.seed
        splat_output = job.output == common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT
        request.params.want_mesh = not splat_output
        request.params.want_gaussians = splat_output or request.with_gaussians
        with self.memory_guard():
            result = engine.run(job.image, job.prompt, request.params, reporter.span(0.0, 0.9))
        timings = list(result.timings)
        artifacts: list[Artifact] = []
        stats = None
        if result.mesh is not None:
            glb, stats = finish_mesh(result.mesh, request.simplify, request.texture_size, self.device,
                                     reporter, timings)  # fmt: skip
            artifacts.append(glb)
        if result.splats is not None:
            artifacts.append(ply_artifact(result.splats, timings))
            if stats is None:
                stats = points_stats(result.splats.xyz, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
        assert stats is not None
        return ReconOutput(artifacts, stats, timings)
