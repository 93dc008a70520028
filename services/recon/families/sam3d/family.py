"""SAM 3D Objects as a recon family: image (+ mask) -> GLB or Gaussian splats, with the object's pose."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.families.sam3d import loader, preprocess
from services.recon.families.sam3d.engine import Sam3dEngine
from services.recon.families.stages import FlowRequest
from services.recon.families.trellis.meshing import finish_mesh
from services.recon.gaussians import ply_artifact
from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument, Violations
from threegen.geometry import points_stats
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.recon.sam3d")


@dataclass
class Sam3dRequest(FlowRequest):
    with_texture: bool = True


class Sam3dFamily(Family):
    name = "sam3d"
    family = common_pb2.FAMILY_SAM3D
    options_field = "sam3d"
    outputs = (common_pb2.GEOMETRY_KIND_MESH, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)

    @property
    def source(self) -> str:
        return self.settings.sam3d_model

    def parse_options(self, options: Any | None, violations: Violations) -> Sam3dRequest:
        request = Sam3dRequest.parse(options, "options.sam3d", violations)
        if options is not None and options.HasField("with_texture"):
            request.with_texture = options.with_texture
        return request

    def load(self) -> None:
        files = loader.find(self.settings.sam3d_model)
        self.engine = Sam3dEngine(files, self.device, self.settings.sam3d_moge)
        self.memory_bytes = self.resident_bytes(self.engine.modules())

    @staticmethod
    def object_rgba(image: Image.Image, mask: Image.Image | None) -> np.ndarray:
        """The image with the object as alpha: the mask when sent, else the image's own alpha
        (background removal ran before), else the whole image."""
        pixels = np.asarray(
            image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB")
        )
        selector = None if mask is None else np.asarray(mask.convert("L")) > 127
        try:
            rgba = preprocess.merge_mask(pixels, selector)
            preprocess.validate_mask(rgba)
        except ValueError as exc:
            raise InvalidArgument([("mask" if mask is not None else "image", str(exc))]) from exc
        return rgba

    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        request: Sam3dRequest = job.options
        if job.image is None:
            raise InvalidArgument([("image", "SAM 3D Objects reconstructs from an image")])
        rgba = self.object_rgba(job.image, job.mask)
        request.overrides.apply(request.params, self.engine.defaults)
        request.params.seed = job.seed
        splat_output = job.output == common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT
        request.params.want_mesh = not splat_output
        request.params.want_gaussians = splat_output or request.with_gaussians
        with self.memory_guard():
            result = self.engine.run(rgba, request.params, reporter.span(0.0, 0.9))
        timings = list(result.timings)
        artifacts: list[Artifact] = []
        stats = None
        if result.mesh is not None:
            glb, stats = finish_mesh(result.mesh, request.simplify, request.texture_size, self.device,
                                     reporter, timings, with_texture=request.with_texture)  # fmt: skip
            artifacts.append(glb)
        if result.splats is not None:
            artifacts.append(ply_artifact(result.splats, timings))
            if stats is None:
                stats = points_stats(result.splats.xyz, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT)
        pose = {
            **result.pose,
            "frame": "camera (PyTorch3D); rotation is a wxyz quaternion, object local to camera",
        }
        artifacts.append(Artifact("pose.json", json.dumps(pose, indent=1).encode()))
        assert stats is not None
        return ReconOutput(artifacts, stats, timings)
