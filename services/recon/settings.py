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
    trellis_model: str = setting(
        "microsoft/TRELLIS-image-large",
        "TRELLIS image model: a folder with pipeline.json + ckpts/, or an HF repo id.",
    )
    trellis_text_model: str = setting(
        "microsoft/TRELLIS-text-xlarge",
        "TRELLIS text model (same layout); empty: this deployment takes images only.",
    )
    trellis_dinov2: str = setting(
        "",
        "DINOv2 weights for TRELLIS (dinov2_vitl14_reg4_pretrain.pth or its folder); empty: torch.hub cache.",
    )
    trellis_clip: str = setting("", "CLIP text model for TRELLIS text; empty: the one pipeline.json names.")
    hunyuan3d_model: str = setting(
        "tencent/Hunyuan3D-2", "Hunyuan3D-2 shape weights: a local copy of the repository, or an HF repo id."
    )
    hunyuan3d_subfolder: str = setting(
        "hunyuan3d-dit-v2-0",
        "Shape model folder in it (hunyuan3d-dit-v2-0, -fast, -turbo; v2-mini in 2mini).",
    )
    hunyuan3d_paint_model: str = setting(
        "tencent/Hunyuan3D-2",
        "Texture weights (delight + paint folders); empty: no texture in this deployment.",
    )
    hunyuan3d_memory_profile: int = setting(
        3, "Default memory profile 1-5 and what rests on the GPU between requests (1: all, 5: least)."
    )
    hunyuan3d_max_faces: int = setting(40000, "Faces kept before texturing (upstream's face reducer).")
    hunyuan3d_texture_size: int = setting(2048, "Baked texture size in pixels.")
    hunyuan3d_render_size: int = setting(2048, "Size of the views baked into the texture.")
    hunyuan3d_view_size: int = setting(512, "Size of the delighted image and painted views (multiple of 8).")
    hunyuan3d_delight_steps: int = setting(50, "Steps of the delighting model.")
    hunyuan3d_paint_steps: int = setting(30, "Steps of the multiview paint model.")
    sam3d_model: str = setting(
        "facebook/sam-3d-objects",
        "SAM 3D Objects: a folder with pipeline.yaml (or checkpoints/[hf/]pipeline.yaml), or an HF repo "
        "id (gated: log in first).",
    )
    sam3d_moge: str = setting(
        "",
        "MoGe depth model for SAM 3D (a folder with model.pt, or an HF repo id); empty: the one "
        "pipeline.yaml names.",
    )
    xcube_model: str = setting(
        "xcube",
        "XCube: a folder laid out like the XCube repository (configs/objaverse + checkpoints/objaverse), "
        "or seed 004's objaverse_coarse/ + objaverse_fine/ folders. Not on Hugging Face.",
    )
    xcube_text_encoder: str = setting(
        "stabilityai/stable-diffusion-2-1-base",
        "XCube's text tower: a folder or HF repo id with text_encoder/.",
    )
    xcube_tokenizer: str = setting(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "XCube's tokenizer (folder or HF id)."
    )
    xcube_trust_checkpoints: bool = setting(
        False,
        "Unpickle XCube's Lightning checkpoints fully (they may hold more than tensors); local files only.",
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
        self.require(1 <= self.hunyuan3d_memory_profile <= 5, "hunyuan3d_memory_profile", "must be 1..5")
        self.require(self.hunyuan3d_max_faces >= 100, "hunyuan3d_max_faces", "must be at least 100")
        for name in ("hunyuan3d_texture_size", "hunyuan3d_render_size", "hunyuan3d_view_size"):
            value = getattr(self, name)
            self.require(64 <= value <= 8192 and value % 8 == 0, name, "must be a multiple of 8 in 64..8192")
        for name in ("hunyuan3d_delight_steps", "hunyuan3d_paint_steps"):
            self.require(1 <= getattr(self, name) <= 200, name, "must be 1..200")
