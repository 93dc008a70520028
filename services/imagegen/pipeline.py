"""Text -> images with SD-Turbo / SDXL-Turbo through diffusers (no gRPC here)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from services.imagegen.params import ImageParams
from services.imagegen.settings import ImageGenSettings
from threegen.runtime.work import Reporter
from threegen.weights import module_bytes, resolve

log = logging.getLogger("threegen.imagegen")


@dataclass
class View:
    image: Image.Image
    candidate: int
    seed: int
    clip_score: float = 0.0


@dataclass
class ImageResult:
    views: list[View]
    model: str
    timings: list[tuple[str, float]] = field(default_factory=list)


class ModelStore:
    """Loads diffusers pipelines from their folders and keeps them resident."""

    def __init__(self, settings: ImageGenSettings, device: str):
        self.settings = settings
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self._pipes: dict[str, object] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def source(self, name: str) -> str:
        return self.settings.sd_turbo_model if name == "sd-turbo" else self.settings.sdxl_turbo_model

    def loaded(self, name: str) -> bool:
        return name in self._pipes

    def error(self, name: str) -> str:
        return self._errors.get(name, "")

    def memory(self, name: str) -> int:
        pipe = self._pipes.get(name)
        if pipe is None:
            return 0
        return sum(module_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))  # type: ignore[attr-defined]

    def get(self, name: str) -> object:
        with self._lock:
            pipe = self._pipes.get(name)
            if pipe is None:
                try:
                    pipe = self._load(name)
                except Exception as exc:
                    self._errors[name] = f"{type(exc).__name__}: {exc}"
                    raise
                self._errors.pop(name, None)
                self._pipes[name] = pipe
            return pipe

    def _load(self, name: str) -> object:
        from diffusers import AutoPipelineForText2Image

        setting = (
            "THREEGEN_IMAGEGEN_SD_TURBO_MODEL" if name == "sd-turbo" else "THREEGEN_IMAGEGEN_SDXL_TURBO_MODEL"
        )
        folder = resolve(self.source(name), setting=setting)
        variant = None
        if (
            self.dtype == torch.float16
            and (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
        ):
            variant = "fp16"
        started = time.perf_counter()
        pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=self.dtype, variant=variant)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self.device)
        log.info(
            "loaded %s from %s on %s in %.1f s", name, folder, self.device, time.perf_counter() - started
        )
        return pipe


class ImageGenerator:
    def __init__(self, store: ModelStore):
        self.store = store

    def generate(self, params: ImageParams, reporter: Reporter) -> ImageResult:
        timings: list[tuple[str, float]] = []
        started = time.perf_counter()
        reporter.progress("load", 0.0, f"preparing {params.model}")
        pipe = self.store.get(params.model)
        timings.append(("load", time.perf_counter() - started))
        denoise = reporter.span(0.0, 0.9)

        def on_step(_pipe: object, step: int, _timestep: object, kwargs: dict) -> dict:
            denoise.progress("denoise", (step + 1) / params.steps, f"step {step + 1}/{params.steps}")
            return kwargs

        device = self.store.device
        generators = [
            torch.Generator(device=device).manual_seed((params.seed + i) % 2**32)
            for i in range(params.num_views)
        ]
        started = time.perf_counter()
        output = pipe(  # type: ignore[operator]
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            width=params.width,
            height=params.height,
            num_images_per_prompt=params.num_views,
            generator=generators,
            callback_on_step_end=on_step,
        )
        timings.append(("diffusion", time.perf_counter() - started))
        views = [View(image, i, (params.seed + i) % 2**32) for i, image in enumerate(output.images)]
        reporter.progress("done", 1.0)
        return ImageResult(views[: params.top_k], params.model, timings)
