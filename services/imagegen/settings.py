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
    sd_turbo_model: str = setting(
        "stabilityai/sd-turbo", "SD-Turbo weights: a diffusers folder or an HF repo id."
    )
    sdxl_turbo_model: str = setting(
        "stabilityai/sdxl-turbo", "SDXL-Turbo weights: a diffusers folder or an HF repo id."
    )
    default_model: str = setting(
        "sd-turbo", "Model used when a request leaves it unset: sd-turbo or sdxl-turbo."
    )
    preload: tuple[str, ...] = setting(("sd-turbo",), "Models loaded at start-up (others load on first use).")
    max_side: int = setting(1024, "Largest width or height a request may ask for.")

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
