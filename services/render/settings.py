"""render settings (prefix THREEGEN_RENDER_)."""

from __future__ import annotations

import dataclasses

from threegen.config import setting
from threegen.runtime.settings import ServerSettings


@dataclasses.dataclass(frozen=True)
class RenderSettings(ServerSettings):
    PREFIX = "THREEGEN_RENDER_"
    TITLE = "render"

    port: int = setting(50054, "gRPC port; 0 picks a free one.")
    gl_platform: str = setting(
        "auto", "pyrender platform: `auto` (EGL with a GPU, else OSMesa), `egl` or `osmesa`."
    )
    max_geometry_bytes: int = setting(512 * 1024 * 1024, "Largest geometry upload, in bytes.")
    max_frames: int = setting(1200, "Most frames one preview may have (seconds x fps).")
    upload_idle_seconds: float = setting(30.0, "An upload stream silent this long is refused.")
    video_crf: int = setting(23, "H.264 quality (lower is better and larger), 0..51.")

    def validate(self) -> None:
        super().validate()
        self.require(
            self.gl_platform in ("auto", "egl", "osmesa"), "gl_platform", "must be auto, egl or osmesa"
        )
        self.require(0 <= self.video_crf <= 51, "video_crf", "must be 0..51")
        self.require(self.max_frames >= 1, "max_frames", "must be at least 1")
