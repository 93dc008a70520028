"""imagegen settings (prefix THREEGEN_IMAGEGEN_)."""

from __future__ import annotations

import dataclasses

from threegen.config import setting
from threegen.runtime.settings import ServerSettings

MODEL_NAMES = ("sd-turbo", "sdxl-turbo")


@dataclasses.dataclass(frozen=True)
class ImageGenSettings(ServerSettings):
    PREFIX = "THREEGEN_IMAGEGEN_"
    TITLE = "imagegen"

    port: int = setting(50052, "gRPC port; 0 picks a free one.")
    max_concurrent: int = setting(
        8, "Requests admitted at once; the batcher runs them on the GPU together.", fallback="MAX_CONCURRENT"
    )
    sd_turbo_model: str = setting(
        "stabilityai/sd-turbo", "SD-Turbo weights: a diffusers folder or an HF repo id."
    )
    sdxl_turbo_model: str = setting(
        "stabilityai/sdxl-turbo", "SDXL-Turbo weights: a diffusers folder or an HF repo id."
    )
    default_model: str = setting(
        "sd-turbo", "Model used when a request leaves it unset: sd-turbo or sdxl-turbo."
    )
    preload: tuple[str, ...] = setting(
        ("sd-turbo",), "Models loaded at start-up and kept resident; others load on demand (LRU)."
    )
    memory_budget_gb: float = setting(
        0.0, "GPU memory for diffusion weights; on-demand models are evicted LRU to fit. 0: 80% of the GPU."
    )
    max_side: int = setting(1024, "Largest width or height a request may ask for.")
    clip_model: str = setting(
        "openai/clip-vit-base-patch32", "CLIP model that re-ranks candidate views.", fallback="CLIP_REPO"
    )
    lora_dir: str = setting("", "Folder of LoRA .safetensors files; requests name files in it (never paths).")
    loras: tuple[str, ...] = setting((), "LoRAs applied when a request names none.", fallback="LORA_NAMES")
    lora_scales: tuple[float, ...] = setting(
        (), "Scales of the default LoRAs (1.0 each if empty).", fallback="LORA_SCALES"
    )
    rembg_model: str = setting(
        "u2net",
        "Background removal: a rembg model name, or a u2net-format .onnx file (its folder becomes "
        "rembg's model home).",
    )
    batch_window_ms: float = setting(
        10.0, "How long the batcher waits for compatible requests; 0 disables batching."
    )
    max_batch_images: int = setting(
        4,
        "Most images in one batched forward pass. 4 lets two batches alternate under load, one on the "
        "GPU while the other's members are answered and come back. With 8 clients on an H100: "
        "2.1-2.6x the throughput of no batching against 1.9-2.25x with 8 (SD-Turbo, 512 px), 3.07x "
        "against 2.85x (SDXL-Turbo).",
    )
    png_level: int = setting(
        1,
        "zlib level of the PNGs sent out, 0..9, where a request sets none (GenerateRequest.png_level). "
        "0 (stored) costs ~2 ms a 512 px image to write and to read, at 1.2x the bytes for a diffusion "
        "image and several times for flat or cut-out ones: worth it where the network is in-cluster.",
    )

    def validate(self) -> None:
        super().validate()
        self.require(self.default_model in MODEL_NAMES, "default_model", f"must be one of {MODEL_NAMES}")
        bad = [m for m in self.preload if m not in MODEL_NAMES]
        self.require(not bad, "preload", f"unknown models {bad}; known: {MODEL_NAMES}")
        self.require(
            64 <= self.max_side <= 2048 and self.max_side % 64 == 0,
            "max_side",
            "must be a multiple of 64 in 64..2048",
        )
        self.require(self.memory_budget_gb >= 0, "memory_budget_gb", "must be 0 or more")
        self.require(not self.loras or bool(self.lora_dir), "loras", "default LoRAs need LORA_DIR")
        self.require(
            not self.lora_scales or len(self.lora_scales) == len(self.loras),
            "lora_scales",
            "needs one scale per LoRA in LORAS",
        )
        self.require(0 <= self.batch_window_ms <= 1000, "batch_window_ms", "must be 0..1000")
        self.require(1 <= self.max_batch_images <= 64, "max_batch_images", "must be 1..64")
        self.require(0 <= self.png_level <= 9, "png_level", "must be 0..9")
