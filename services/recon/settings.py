"""recon settings (prefix THREEGEN_RECON_)."""

from __future__ import annotations

import dataclasses

from services.recon.families import REGISTRY
from threegen.config import setting
from threegen.runtime.settings import ServerSettings


@dataclasses.dataclass(frozen=True)
class ReconSettings(ServerSettings):
    PREFIX = "THREEGEN_RECON_"
    TITLE = "recon"

    port: int = setting(50053, "gRPC port; 0 picks a free one.")
    families: tuple[str, ...] = setting(("triposr",), "Families this deployment loads, comma-separated.")
    default_family: str = setting("triposr", "Family used when a request leaves it unset.")
    triposr_model: str = setting(
        "stabilityai/TripoSR", "TripoSR weights: a folder with config.yaml + model.ckpt, or an HF repo id."
    )
    triposr_chunk_points: int = setting(
        0, "Points per density-query batch (memory vs speed); 0: 2M on a GPU, 256k on a CPU."
    )
    rembg_model: str = setting(
        "u2net", "Background removal for RGB inputs: a rembg model name, or a u2net-format .onnx file."
    )
    max_image_bytes: int = setting(16 * 1024 * 1024, "Largest input image upload, in bytes.")
    max_image_pixels: int = setting(4096 * 4096, "Largest input image, in pixels (decompression bombs).")
    upload_idle_seconds: float = setting(30.0, "An upload stream silent this long is refused.")

    def validate(self) -> None:
        super().validate()
        unknown = [f for f in self.families if f not in REGISTRY]
        self.require(not unknown, "families", f"unknown families {unknown}; known: {sorted(REGISTRY)}")
        self.require(bool(self.families), "families", "at least one family is needed")
        self.require(self.default_family in self.families, "default_family", "must be one of FAMILIES")
        self.require(
            self.triposr_chunk_points == 0 or self.triposr_chunk_points >= 1024,
            "triposr_chunk_points",
            "must be 0 (auto) or at least 1024",
        )
