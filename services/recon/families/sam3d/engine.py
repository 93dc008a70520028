"""SAM 3D Objects inference: image + mask + point map -> shape and pose -> structured latent -> 3D.

Follows upstream's InferencePipelinePointMap step by step: a point map from MoGe (or given),
the object-centred inputs of each stage, stage 1 (shape and pose latents, a ShortCut flow run
without shortcut) decoded to a 64^3 occupancy, pruned to its surface voxels, stage 2 (a TRELLIS
SLat flow on those voxels), de-normalised and decoded to a mesh and Gaussians. Flow time runs
from noise (t=0) to data (t=1) on upstream's rescaled grid, with guidance (1+s)*cond - s*uncond
inside the interval, the unconditional pass using zeroed condition tokens. Noise comes from a
per-request generator (upstream seeds torch's global RNG).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from services.recon import sparse as sp
from services.recon.families.sam3d import loader, pose, preprocess
from services.recon.families.stages import FlowParams, Stage
from services.recon.families.trellis.meshing import Mesh, features_to_mesh
from services.recon.gaussians import Splats, activate
from threegen.errors import InvalidArgument
from threegen.runtime.work import Reporter
from threegen.stopwatch import Laps
from threegen.weights import WeightsNotFound

log = logging.getLogger("threegen.recon.sam3d")
TIME_SCALE = 1000.0


@dataclass
class Sam3dResult:
    mesh: Mesh | None
    splats: Splats | None
    voxels: int
    pose: dict[str, list[float]]
    timings: list[tuple[str, float]] = field(default_factory=list)


def time_grid(stage: Stage) -> np.ndarray:
    times = np.linspace(0.0, 1.0, stage.steps + 1)
    if stage.rescale_t:
        times = times / (1 + (stage.rescale_t - 1) * (1 - times))
    return times


def sample(
    velocity: Callable[[object, torch.Tensor, torch.Tensor], object],
    noise,
    cond: torch.Tensor,
    stage: Stage,
    on_step: Callable[[int], None],
):
    """Euler steps of a rectified flow from noise (t=0) to data (t=1); `noise` is a tensor, a
    dict of tensors or a sparse tensor, and `velocity` returns the same structure."""
    uncond = torch.zeros_like(cond)
    times = time_grid(stage)
    x = noise
    for i in range(stage.steps):
        t, dt = float(times[i]), float(times[i + 1] - times[i])
        tt = torch.full((1,), t * TIME_SCALE, device=cond.device, dtype=torch.float32)
        v = velocity(x, tt, cond)
        low, high = stage.cfg_interval
        if stage.cfg_strength > 0 and low <= t <= high:
            v = _combine(v, velocity(x, tt, uncond), stage.cfg_strength)
        x = _step(x, v, dt)
        on_step(i + 1)
    return x


def _combine(cond, uncond, strength: float):
    if isinstance(cond, dict):
        return {k: (1 + strength) * cond[k] - strength * uncond[k] for k in cond}
    return (1 + strength) * cond - strength * uncond


def _step(x, v, dt: float):
    if isinstance(x, dict):
        return {k: x[k] + v[k] * dt for k in x}
    if isinstance(x, sp.SparseTensor):
        return x.replace(x.feats + v * dt)
    return x + v * dt


def stage_defaults(pipeline: dict, prefix: str, steps: int, strength: float, rescale: float) -> Stage:
    interval = pipeline.get(f"{prefix}_cfg_interval") or (0.0, 500.0)  # upstream states it in t * 1000
    return Stage(
        int(pipeline.get(f"{prefix}_inference_steps") or steps),
        float(pipeline.get(f"{prefix}_cfg_strength", strength)),
        (float(interval[0]) / TIME_SCALE, float(interval[1]) / TIME_SCALE),
        float(pipeline.get(f"{prefix}_rescale_t") or rescale),
    )


def _resize_size(preprocessor: dict | None, default: int) -> int:
    """The Resize size of a preprocessor's img_transform (770 in the published yaml)."""
    try:
        for transform in preprocessor["img_transform"]["transforms"]:
            if str(transform.get("_target_", "")).endswith("Resize"):
                return int(transform["size"])
    except (KeyError, TypeError):
        pass
    return default


class Sam3dEngine:
    def __init__(self, files: loader.PipelineFiles, device: str, depth_source: str = ""):
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.files = files
        pipeline = files.pipeline
        self.ss_flow, self.ss_embedder = loader.build_generator(
            files, "ss_generator", self.dtype, self.device
        )
        self.slat_flow, self.slat_embedder = loader.build_generator(
            files, "slat_generator", self.dtype, self.device
        )
        self.ss_decoder = loader.build_decoder(files, "ss_decoder", self.dtype, self.device)
        self.mesh_decoder = loader.build_decoder(files, "slat_decoder_mesh", self.dtype, self.device)
        self.gs_decoder = loader.build_decoder(files, "slat_decoder_gs", self.dtype, self.device)
        self.defaults = {
            "sparse_structure": stage_defaults(pipeline, "ss", 25, 7.0, 3.0),
            "slat": stage_defaults(pipeline, "slat", 25, 5.0, 1.0),
        }
        self.slat_mean = torch.tensor(pipeline["slat_mean"], device=self.device)[None]
        self.slat_std = torch.tensor(pipeline["slat_std"], device=self.device)[None]
        self.prune = int(pipeline.get("downsample_ss_dist", 1) or 0) > 0
        self.ss_size = _resize_size(pipeline.get("ss_preprocessor"), 770)
        self.slat_size = _resize_size(pipeline.get("slat_preprocessor"), 770)
        self.depth = self._load_depth(depth_source)

    def _load_depth(self, source: str):
        from services.recon.moge import load_moge

        if not source:
            node = self.files.pipeline.get("depth_model") or {}
            source = str((node.get("model") or {}).get("pretrained_model_name_or_path", ""))
        if not source:  # requests carry no point map, so this deployment could serve nothing
            raise WeightsNotFound(
                "SAM 3D needs a depth model: pipeline.yaml names none and THREEGEN_RECON_SAM3D_MOGE is empty"
            )
        local = self.files.root / source
        return load_moge(str(local) if local.exists() else source, self.device, self.dtype)

    def modules(self) -> list[torch.nn.Module]:
        found = [self.ss_flow, self.ss_embedder, self.slat_flow, self.slat_embedder, self.ss_decoder,
                 self.mesh_decoder, self.gs_decoder]  # fmt: skip
        return [*found, self.depth]

    # -- steps ------------------------------------------------------------------------------

    def point_map(self, rgba: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(rgba[:, :, :3].astype(np.float32) / 255).permute(2, 0, 1).to(self.device)
        points = self.depth.infer(image, force_projection=False)["points"].float()
        return preprocess.to_camera_pointmap(points)

    def _embed(self, embedder: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = {k: v.to(self.device, self.dtype) for k, v in inputs.items()}
        return embedder(**moved).to(self.dtype)

    def sparse_structure(self, ss_inputs: dict, stage: Stage, generator, reporter: Reporter):
        cond = self._embed(self.ss_embedder, preprocess.embedder_inputs(ss_inputs))
        shapes = self.ss_flow.latent_shapes()
        # drawn in sorted name order as upstream's tree map does: the same numbers for a seed on CPU
        noise = {
            name: torch.randn(1, *shapes[name], generator=generator, device=self.device)
            for name in sorted(shapes)
        }
        zero = torch.zeros(1, device=self.device)

        def velocity(x, t, c):
            return self.ss_flow(x, t, c, zero)

        latents = sample(
            velocity, noise, cond, stage,
            lambda i: reporter.progress("sparse_structure", 0.05 + 0.3 * i / stage.steps, f"step {i}"),
        )  # fmt: skip
        shape = latents["shape"]
        side = round(shape.shape[1] ** (1 / 3))  # 16 in the published model
        grid = shape.permute(0, 2, 1).reshape(1, shape.shape[2], side, side, side)
        occupancy = self.ss_decoder(grid.to(self.dtype))
        coords = torch.argwhere(occupancy > 0)[:, [0, 2, 3, 4]].int()
        return latents, coords

    @torch.inference_mode()
    def run(self, rgba: np.ndarray, params: FlowParams, reporter: Reporter) -> Sam3dResult:
        lap = Laps(self.device)
        pointmap = self.point_map(rgba)
        lap("point_map")
        reporter.progress("point_map", 0.05)
        ss_inputs = preprocess.prepare_ss_inputs(rgba, pointmap, self.ss_size)
        slat_inputs = preprocess.prepare_slat_inputs(rgba, self.slat_size)
        generator = torch.Generator(device=self.device).manual_seed(params.seed)

        stage = params.sparse_structure or self.defaults["sparse_structure"]
        latents, coords = self.sparse_structure(ss_inputs, stage, generator, reporter)
        if coords.shape[0] == 0:
            raise InvalidArgument([("image", "the model found no occupied voxel for this object")])
        if self.prune:
            coords = pose.prune_surface(coords)
        coords, factor = pose.downsample_if_large(coords)
        decoded = pose.decode_pose(latents, ss_inputs["pointmap_scale"], ss_inputs["pointmap_shift"])
        decoded["scale"] = decoded["scale"] * factor
        lap("sparse_structure")

        cond = self._embed(self.slat_embedder, preprocess.embedder_inputs(slat_inputs))
        feats = torch.randn(
            coords.shape[0], self.slat_flow.in_channels, generator=generator, device=self.device
        )
        stage = params.slat or self.defaults["slat"]

        def velocity(x, t, c):
            return self.slat_flow(x, t, c).feats.float()

        slat = sample(
            velocity, sp.SparseTensor(feats, coords), cond, stage,
            lambda i: reporter.progress("structured_latent", 0.35 + 0.45 * i / stage.steps, f"step {i}"),
        )  # fmt: skip
        slat = slat.replace((slat.feats * self.slat_std + self.slat_mean).to(self.dtype))
        lap("structured_latent")

        mesh = splats = None
        if params.want_mesh:
            fine = self.mesh_decoder(sp.SparseTensor(slat.feats, slat.coords))
            mesh = features_to_mesh(
                fine, self.mesh_decoder.resolution * 4, self.mesh_decoder.use_color, "image"
            )
            lap("decode_mesh")
            reporter.progress("decode_mesh", 0.9)
        if params.want_gaussians:
            raw = self.gs_decoder(sp.SparseTensor(slat.feats, slat.coords))[0]
            splats = activate(raw, self.gs_decoder.rep_config)
            lap("decode_gaussians")
            reporter.progress("decode_gaussians", 0.95)
        summary = {
            k: [float(x) for x in decoded[k].reshape(-1).tolist()]
            for k in ("rotation", "translation", "scale")
        }
        return Sam3dResult(mesh, splats, int(coords.shape[0]), summary, lap.timings)
