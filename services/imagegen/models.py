"""Diffusion pipelines kept resident under a GPU-memory budget, LoRAs by name, CLIP scoring.

Pre-loaded models stay resident; any other model is loaded when a request needs it and the
least recently used unpinned, idle model is evicted first when the budget would overflow.
A request that cannot fit even then gets RESOURCE_EXHAUSTED, not an out-of-memory crash.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from services.imagegen.settings import ImageGenSettings
from threegen.errors import InvalidArgument, ResourceExhausted
from threegen.weights import module_bytes, resolve

log = logging.getLogger("threegen.imagegen")

WEIGHT_SUFFIXES = (".safetensors", ".bin")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def estimate_bytes(folder: Path, dtype: torch.dtype, variant: str | None) -> int:
    """Weight bytes of a diffusers folder once loaded in `dtype`, from its file sizes."""
    total = 0
    for component in COMPONENTS:
        files = [p for p in (folder / component).glob("*") if p.name.endswith(WEIGHT_SUFFIXES)]
        chosen = [p for p in files if variant and f".{variant}." in p.name] or [
            p for p in files if ".fp16." not in p.name
        ]
        size = sum(p.stat().st_size for p in chosen)
        if not (variant and chosen and f".{variant}." in chosen[0].name) and dtype == torch.float16:
            size //= 2  # fp32 files cast to fp16 on load
        total += size
    return total


@dataclass
class Resident:
    name: str
    pipe: object
    bytes: int
    pinned: bool
    users: int = 0
    adapters: set[str] | None = None


class ModelStore:
    def __init__(self, settings: ImageGenSettings, device: str):
        self.settings = settings
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._lock = threading.RLock()
        self.budget = self._budget()

    def _budget(self) -> int:
        if self.settings.memory_budget_gb > 0:
            return int(self.settings.memory_budget_gb * 2**30)
        if self.device.startswith("cuda"):
            return int(torch.cuda.get_device_properties(torch.device(self.device)).total_memory * 0.8)
        return 1 << 62  # host memory is not managed here

    def source(self, name: str) -> str:
        return self.settings.sd_turbo_model if name == "sd-turbo" else self.settings.sdxl_turbo_model

    def loaded(self, name: str) -> bool:
        return name in self._resident

    def error(self, name: str) -> str:
        return self._errors.get(name, "")

    def memory(self, name: str) -> int:
        resident = self._resident.get(name)
        return resident.bytes if resident else 0

    @property
    def resident_bytes(self) -> int:
        return sum(r.bytes for r in self._resident.values())

    @contextlib.contextmanager
    def use(self, name: str, pinned: bool = False) -> Iterator[Resident]:
        """Hold a model (loading it first if needed) so it cannot be evicted meanwhile."""
        with self._lock:
            resident = self._resident.get(name) or self._load(name, pinned)
            self._resident.move_to_end(name)
            resident.users += 1
        try:
            yield resident
        finally:
            with self._lock:
                resident.users -= 1

    def _load(self, name: str, pinned: bool) -> Resident:
        setting = (
            "THREEGEN_IMAGEGEN_SD_TURBO_MODEL" if name == "sd-turbo" else "THREEGEN_IMAGEGEN_SDXL_TURBO_MODEL"
        )
        try:
            folder = resolve(self.source(name), setting=setting)
            variant = None
            if (
                self.dtype == torch.float16
                and (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
            ):
                variant = "fp16"
            need = estimate_bytes(folder, self.dtype, variant)
            self._make_room(name, need)
            from diffusers import AutoPipelineForText2Image

            started = time.perf_counter()
            pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=self.dtype, variant=variant)
            pipe.set_progress_bar_config(disable=True)
            pipe = pipe.to(self.device)
        except ResourceExhausted:
            raise
        except Exception as exc:
            self._errors[name] = f"{type(exc).__name__}: {exc}"
            raise
        held = sum(module_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
        resident = Resident(name, pipe, held, pinned, adapters=set())
        self._resident[name] = resident
        self._errors.pop(name, None)
        log.info(
            "loaded %s from %s on %s in %.1f s (%.2f GB)",
            name,
            folder,
            self.device,
            time.perf_counter() - started,
            held / 2**30,
        )
        return resident

    def _make_room(self, name: str, need: int) -> None:
        while self.resident_bytes + need > self.budget:
            idle = [r for r in self._resident.values() if not r.pinned and r.users == 0]
            if not idle:
                held = ", ".join(f"{r.name} {r.bytes / 2**30:.1f} GB" for r in self._resident.values())
                raise ResourceExhausted(
                    f"{name} needs {need / 2**30:.1f} GB but the GPU budget is {self.budget / 2**30:.1f} GB "
                    f"and resident models are pinned or busy ({held}); retry later or raise MEMORY_BUDGET_GB"
                )
            victim = idle[0]  # OrderedDict order is least recently used first
            del self._resident[victim.name]
            victim.pipe = None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            log.info("evicted %s to make room for %s", victim.name, name)


class LoraLibrary:
    """LoRA files by name inside one folder; nothing outside it can be named."""

    def __init__(self, folder: str):
        self.folder = Path(folder).expanduser().resolve() if folder else None

    def path(self, name: str, field: str) -> Path:
        if self.folder is None:
            raise InvalidArgument([(field, "LoRAs are not enabled on this deployment (no LORA_DIR)")])
        candidate = (self.folder / f"{name}.safetensors").resolve()
        if candidate.parent != self.folder:
            raise InvalidArgument([(field, "must name a file inside the LoRA folder")])
        if not candidate.is_file():
            available = ", ".join(sorted(p.stem for p in self.folder.glob("*.safetensors"))) or "none"
            raise InvalidArgument([(field, f"no LoRA named {name!r} (available: {available})")])
        return candidate

    def check(self, loras: tuple[tuple[str, float], ...], prefix: str = "options") -> None:
        for index, (name, _) in enumerate(loras):
            self.path(name, f"{prefix}.loras[{index}].name")

    def apply(self, resident: Resident, loras: tuple[tuple[str, float], ...]) -> None:
        """Activate exactly these adapters (loading them once per pipeline) at their scales."""
        pipe = resident.pipe
        adapters = resident.adapters if resident.adapters is not None else set()
        for index, (name, _) in enumerate(loras):
            if name not in adapters:
                path = self.path(name, f"options.loras[{index}].name")
                try:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)  # type: ignore[attr-defined]
                except Exception as exc:
                    raise InvalidArgument(
                        [(f"options.loras[{index}].name", f"cannot be applied to {resident.name}: {exc}")]
                    ) from None
                adapters.add(name)
        resident.adapters = adapters
        if not adapters:
            return
        if loras:
            pipe.enable_lora()  # type: ignore[attr-defined]
            pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])  # type: ignore[attr-defined]
        else:
            pipe.disable_lora()  # type: ignore[attr-defined]


class ClipScorer:
    """Scores images against a prompt: cosine similarity of CLIP embeddings, x100."""

    def __init__(self, source: str, device: str):
        self.source = source
        self.device = device
        self.model: object | None = None
        self.processor: object | None = None
        self.error = ""
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self.model is not None:
                return
            try:
                from transformers import CLIPModel, CLIPProcessor

                folder = resolve(self.source, setting="THREEGEN_IMAGEGEN_CLIP_MODEL")
                dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
                self.model = CLIPModel.from_pretrained(str(folder), dtype=dtype).to(self.device).eval()
                self.processor = CLIPProcessor.from_pretrained(str(folder))
                self.error = ""
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                raise

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def memory_bytes(self) -> int:
        return module_bytes(self.model) if self.model is not None else 0

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) in [0,1] on any device -> CLIP pixel values, prepared on that device.

        The same steps as the model's CLIPImageProcessor (shortest side to the target size,
        bicubic; centre crop; normalise), done with torch so the images never leave the GPU.
        """
        image_processor = self.processor.image_processor  # type: ignore[attr-defined]
        size = image_processor.size.get("shortest_edge") or image_processor.size.get("height")
        crop = image_processor.crop_size
        height, width = images.shape[-2:]
        scale = size / min(height, width)
        resized = torch.nn.functional.interpolate(
            images.float(),
            size=(round(height * scale), round(width * scale)),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp_(0.0, 1.0)
        top = (resized.shape[-2] - crop["height"]) // 2
        left = (resized.shape[-1] - crop["width"]) // 2
        cropped = resized[..., top : top + crop["height"], left : left + crop["width"]]
        mean = torch.tensor(image_processor.image_mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(image_processor.image_std, device=images.device).view(1, 3, 1, 1)
        return (cropped - mean) / std

    @torch.inference_mode()
    def scores(self, prompt: str, images: torch.Tensor) -> list[float]:
        """Cosine similarity x100 of each image (N,3,H,W in [0,1]) with the prompt."""
        self.load()
        text = self.processor.tokenizer(  # type: ignore[attr-defined]
            [prompt], return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        dtype = next(self.model.parameters()).dtype  # type: ignore[attr-defined]
        pixels = self._pixels(images.to(self.device)).to(dtype)
        out = self.model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],  # type: ignore[operator]
            pixel_values=pixels,
        )
        image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        text_embed = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return (image @ text_embed[0] * 100.0).tolist()
