"""Hunyuan3D-2 shape generation: image -> mesh through hy3dgen's own modules and loader.

hy3dgen's `from_single_file` builds the DINOv2 conditioner, the flow-matching DiT and the
ShapeVAE from `config.yaml` and loads the published checkpoint strictly. The stages of its
`__call__` are driven here one by one instead of in a single call, so that each component can
be staged onto the GPU per memory profile, progress is reported per step, cancellation is
honoured between steps, and the density grid goes to threegen's GPU marching cubes instead of
scikit-image on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from services.recon.families.hunyuan3d.compat import ensure_importable
from services.recon.families.hunyuan3d.layout import ShapeFiles
from services.recon.families.placement import Component, Mode, Stager
from services.recon.isosurface import marching_cubes
from threegen.runtime.work import Reporter
from threegen.stopwatch import Laps
from threegen.weights import CheckpointMismatch

log = logging.getLogger("threegen.recon.hunyuan3d")

BOX = 1.01  # half-extent of the decoded volume, as upstream


@dataclass
class ShapeParams:
    steps: int = 30
    guidance_scale: float = 5.0
    octree_resolution: int = 256
    num_chunks: int = 20000
    seed: int = 0


@dataclass
class ShapeResult:
    vertices: np.ndarray
    faces: np.ndarray
    timings: list[tuple[str, float]] = field(default_factory=list)


class ShapeModel:
    COMPONENTS = ("conditioner", "model", "vae")

    def __init__(self, files: ShapeFiles, device: str, resting: dict[str, Mode]):
        ensure_importable()
        from hy3dgen.shapegen.pipelines import Hunyuan3DDiTFlowMatchingPipeline

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            # Built on the CPU; the stager moves components to the GPU per profile.
            self.pipeline = Hunyuan3DDiTFlowMatchingPipeline.from_single_file(
                str(files.checkpoint),
                str(files.config),
                device="cpu",
                dtype=self.dtype,
                use_safetensors=files.checkpoint.suffix == ".safetensors",
            )
        except RuntimeError as exc:
            if "state_dict" in str(exc):
                raise CheckpointMismatch(f"{files.checkpoint} does not match {files.config}: {exc}") from exc
            raise
        self.pipeline.device = self.device  # latents and timesteps are made where the models run
        self.guidance_embed = bool(getattr(self.pipeline.model, "guidance_embed", False))
        self.stager = Stager(
            [
                Component(name, getattr(self.pipeline, name), self.device, resting[name])
                for name in self.COMPONENTS
            ]
        )
        self.stager.settle()

    @torch.inference_mode()
    def generate(self, image: Image.Image, params: ShapeParams, modes: dict[str, Mode], reporter: Reporter):
        pipe = self.pipeline
        lap = Laps(self.device)

        with self.stager.request(modes):
            inputs = pipe.prepare_image(image)
            image_tensor = inputs.pop("image").to(self.device, self.dtype)
            cfg = not self.guidance_embed and params.guidance_scale > 1.0
            with self.stager.use("conditioner"):
                cond = pipe.encode_cond(
                    image=image_tensor,
                    additional_cond_inputs=inputs,
                    do_classifier_free_guidance=cfg,
                    dual_guidance=False,
                )
            lap("encode_image")
            reporter.progress("encode_image", 0.1)

            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

            sigmas = np.linspace(0, 1, params.steps)
            timesteps, _ = retrieve_timesteps(pipe.scheduler, params.steps, self.device, sigmas=sigmas)
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
            latents = pipe.prepare_latents(1, self.dtype, self.device, generator)
            guidance = (
                torch.tensor([params.guidance_scale], device=self.device, dtype=self.dtype)
                if self.guidance_embed
                else None
            )
            with self.stager.use("model") as model:
                for step, t in enumerate(timesteps):
                    batch = torch.cat([latents] * 2) if cfg else latents
                    timestep = (
                        t.expand(batch.shape[0]).to(latents.dtype) / pipe.scheduler.config.num_train_timesteps
                    )
                    velocity = model(batch, timestep, cond, guidance=guidance)
                    if cfg:
                        conditional, unconditional = velocity.chunk(2)
                        velocity = unconditional + params.guidance_scale * (conditional - unconditional)
                    latents = pipe.scheduler.step(velocity, t, latents).prev_sample
                    reporter.progress("denoise", 0.1 + 0.6 * (step + 1) / len(timesteps), f"step {step + 1}")
            lap("denoise")

            with self.stager.use("vae") as vae:
                decoded = vae(latents / vae.scale_factor)
                grid = vae.volume_decoder(
                    decoded,
                    vae.geo_decoder,
                    bounds=BOX,
                    num_chunks=params.num_chunks,
                    octree_resolution=params.octree_resolution,
                    enable_pbar=False,
                )[0]
            lap("decode_volume")
            reporter.progress("decode_volume", 0.85)
            vertices, faces = marching_cubes(grid, 0.0, field="image")
            del grid
            # Grid index i sits at -BOX + i * 2 * BOX / R.
            vertices = vertices * (2 * BOX / params.octree_resolution) - BOX
            lap("marching_cubes")
        return ShapeResult(vertices.astype(np.float32), faces.astype(np.int64), lap.timings)

    def component_bytes(self) -> dict[str, Component]:
        return self.stager.components
