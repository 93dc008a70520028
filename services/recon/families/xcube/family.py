"""XCube as a recon family: text -> point clouds with normals (fine and coarse), as PLY.

A mesh comes from render's surface reconstruction (the gateway asks for it when a mesh export or a
preview is wanted); XCube's own mesher (NKSR) is a CUDA extension and is not used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.families.xcube import loader
from services.recon.families.xcube.engine import PointSet, XCubeEngine, XCubeParams
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import Violations
from threegen.geometry import points_stats
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.recon.xcube")


@dataclass
class XCubeRequest:
    params: XCubeParams


def points_ply(points: PointSet) -> bytes:
    """Binary PLY with normals; colours show the normals (0.5 + 0.5 n), XCube has no colour."""
    from services.render.geometry import Points, write_points_ply

    colors = np.clip(0.5 + 0.5 * points.normals, 0.0, 1.0).astype(np.float32)
    return write_points_ply(Points(points.xyz, colors, points.normals))


class XCubeFamily(Family):
    name = "xcube"
    family = common_pb2.FAMILY_XCUBE
    options_field = "xcube"
    accepts_image = False
    accepts_text = True
    outputs = (common_pb2.GEOMETRY_KIND_POINT_CLOUD,)

    @property
    def source(self) -> str:
        return self.settings.xcube_model

    def parse_options(self, options: Any | None, violations: Violations) -> XCubeRequest:
        params = XCubeParams()
        if options is None:
            return XCubeRequest(params)
        if options.ddim_steps:
            violations.in_range(options.ddim_steps, 1, 1000, "options.xcube.ddim_steps")
            params.steps = options.ddim_steps
        if options.guidance_scale:
            violations.in_range(options.guidance_scale, 1.0, 20.0, "options.xcube.guidance_scale")
            params.guidance = options.guidance_scale
        if options.HasField("use_fine"):
            params.use_fine = options.use_fine
        return XCubeRequest(params)

    def load(self) -> None:
        files = loader.find(self.settings.xcube_model)
        self.engine = XCubeEngine(
            files,
            self.device,
            self.settings.xcube_text_encoder,
            self.settings.xcube_tokenizer,
            self.settings.xcube_trust_checkpoints,
        )
        self.memory_bytes = self.resident_bytes(self.engine.modules())

    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        params: XCubeParams = job.options.params
        params.seed = job.seed
        with self.memory_guard():
            result = self.engine.run(job.prompt, params, reporter.span(0.0, 0.95))
        timings = list(result.timings)
        started = time.perf_counter()
        final = result.fine or result.coarse
        artifacts = [Artifact("points.ply", points_ply(final))]
        if result.fine is not None:
            artifacts.append(Artifact("points_coarse.ply", points_ply(result.coarse)))
        timings.append(("write_ply", time.perf_counter() - started))
        return ReconOutput(artifacts, points_stats(final.xyz, common_pb2.GEOMETRY_KIND_POINT_CLOUD), timings)
