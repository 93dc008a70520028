"""gateway settings (prefix THREEGEN_GATEWAY_)."""

from __future__ import annotations

import dataclasses

from threegen.config import setting
from threegen.runtime.settings import ServerSettings


@dataclasses.dataclass(frozen=True)
class GatewaySettings(ServerSettings):
    PREFIX = "THREEGEN_GATEWAY_"
    TITLE = "gateway"

    port: int = setting(50051, "gRPC port; 0 picks a free one.")
    max_concurrent: int = setting(8, "Pipelines run at once (backends queue their own GPU work).")
    max_queued: int = setting(64, "Pipelines waiting before RESOURCE_EXHAUSTED is returned.")
    imagegen_address: str = setting(
        "localhost:50052", "imagegen target; `dns:///imagegen:50052` spreads over a headless Service."
    )
    recon_address: str = setting("localhost:50053", "recon target.")
    render_address: str = setting("localhost:50054", "render target.")
    backend_retries: int = setting(4, "Attempts per backend call on UNAVAILABLE (with exponential backoff).")
    max_inline_image_bytes: int = setting(
        3 * 1024 * 1024, "Largest image sent inline in GenerateRequest.image."
    )
    max_image_pixels: int = setting(4096 * 4096, "Largest input image, in pixels.")

    def validate(self) -> None:
        super().validate()
        self.require(
            1 <= self.backend_retries <= 5, "backend_retries", "must be 1..5 (gRPC caps attempts at 5)"
        )
