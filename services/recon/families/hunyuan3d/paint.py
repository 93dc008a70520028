"""Hunyuan3D-2 texturing: delight the prompt image, paint six views, bake them into a UV texture.

hy3dgen's `Hunyuan3DPaintPipeline` does the orchestration (recentre, xatlas unwrap, normal and
position renders, back-projection, inpainting). Its two diffusion stages are supplied here:
upstream builds them with fp16 and 'cuda' hard-coded, 50 and 30 steps and 512-pixel views;
here device, precision, step counts and sizes follow the deployment, and the diffusion models
are loaded from the published folders (the multiview UNet through the installed hy3dgen's
`UNet2p5DConditionModel`, never the folder's own copy of that code) and staged per memory
profile. Rasterization uses `custom_rasterizer` when it is compiled, else threegen's torch one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from PIL import Image

from services.recon.families.hunyuan3d.compat import ensure_importable
from services.recon.families.hunyuan3d.layout import PaintFiles
from services.recon.families.placement import Component, Mode, Stager
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.recon.hunyuan3d")

CAMERA_AZIMS = [0, 90, 180, 270, 0, 180]
CAMERA_ELEVS = [0, 0, 0, 0, 90, -90]
VIEW_WEIGHTS = [1, 0.1, 0.5, 0.1, 0.05, 0.05]


@dataclass
class PaintSettings:
    view_size: int = 512
    render_size: int = 2048
    texture_size: int = 2048
    delight_steps: int = 50
    paint_steps: int = 30


class _Config:
    """The attributes hy3dgen's Hunyuan3DPaintPipeline reads from its config."""

    def __init__(self, device: torch.device, settings: PaintSettings):
        self.device = str(device)
        self.candidate_camera_azims = CAMERA_AZIMS
        self.candidate_camera_elevs = CAMERA_ELEVS
        self.candidate_view_weights = VIEW_WEIGHTS
        self.render_size = settings.render_size
        self.texture_size = settings.texture_size
        self.bake_exp = 4
        self.merge_method = "fast"


def _modules(pipeline) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict(
        {"unet": pipeline.unet, "vae": pipeline.vae, "text_encoder": pipeline.text_encoder}
    )


def load_paint_pipeline(folder, dtype: torch.dtype):
    """The multiview painter from its published folder, without running the folder's code.

    model_index.json names `unet: [modules, UNet2p5DConditionModel]`, which diffusers would
    import from the folder's own `unet/modules.py` (remote code). The same class ships in the
    installed hy3dgen, so the components are loaded one by one and handed to hy3dgen's
    HunyuanPaintPipeline; the index is still checked so a different pipeline is refused.
    """
    import json

    from diffusers import AutoencoderKL, DDIMScheduler
    from hy3dgen.texgen.hunyuanpaint.pipeline import HunyuanPaintPipeline
    from hy3dgen.texgen.hunyuanpaint.unet.modules import UNet2p5DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "HunyuanPaintPipeline" or index.get("unet", [None, None])[1] != (
        "UNet2p5DConditionModel"
    ):
        raise ValueError(f"{folder}/model_index.json does not describe Hunyuan3D-2's paint pipeline")
    extractor = folder / "feature_extractor"
    return HunyuanPaintPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=UNet2p5DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=dtype),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
        feature_extractor=CLIPImageProcessor.from_pretrained(extractor) if extractor.is_dir() else None,
    )


class Painter:
    COMPONENTS = ("delight", "paint")

    def __init__(self, files: PaintFiles, device: str, resting: dict[str, Mode], settings: PaintSettings):
        ensure_importable()
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.settings = settings
        delight = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            str(files.delight), dtype=self.dtype, safety_checker=None
        )
        delight.scheduler = EulerAncestralDiscreteScheduler.from_config(delight.scheduler.config)
        paint = load_paint_pipeline(files.paint, self.dtype)
        paint.scheduler = EulerAncestralDiscreteScheduler.from_config(
            paint.scheduler.config, timestep_spacing="trailing"
        )
        for pipeline in (delight, paint):
            pipeline.set_progress_bar_config(disable=True)
        self.delight, self.paint = delight, paint
        self.stager = Stager(
            [
                Component("delight", _modules(delight), self.device, resting["delight"]),
                Component("paint", _modules(paint), self.device, resting["paint"]),
            ]
        )
        self.stager.settle()

    # -- the two diffusion stages, called by hy3dgen's orchestration -----------------------

    def _delight(self, image: Image.Image) -> Image.Image:
        """Remove baked-in lighting: InstructPix2Pix with an empty prompt, then colour-match."""
        import cv2
        from hy3dgen.texgen.utils.dehighlight_utils import Light_Shadow_Remover

        size = self.settings.view_size
        image = image.resize((size, size))
        pixels = np.array(image)
        if image.mode == "RGBA":
            alpha = cv2.erode(pixels[:, :, 3], np.ones((3, 3), np.uint8), iterations=1)
            pixels[alpha == 0, :3] = 255
            pixels[:, :, 3] = alpha
            image = Image.fromarray(pixels)
            target = torch.tensor(pixels / 255.0, device=self.device)
            alpha_t, rgb_target = target[:, :, 3:], target[:, :, :3]
        else:
            target = torch.tensor(pixels / 255.0, device=self.device)
            alpha_t, rgb_target = torch.ones_like(target)[:, :, :1], target[:, :, :3]
        with self.stager.use("delight"):
            result = self.delight(
                prompt="",
                image=image.convert("RGB"),
                generator=torch.Generator(device=self.device).manual_seed(42),
                height=size,
                width=size,
                num_inference_steps=self.settings.delight_steps,
                image_guidance_scale=1.5,
                guidance_scale=1.0,
            ).images[0]
        source = torch.tensor(np.array(result) / 255.0, device=self.device)[:, :, :3]
        corrected = Light_Shadow_Remover.recorrect_rgb(None, source, rgb_target, alpha_t)
        rgb = corrected[:, :, :3] * corrected[:, :, 3:] + (1.0 - corrected[:, :, 3:])
        self.reporter.progress("delight", 0.3)
        return Image.fromarray((rgb.cpu().numpy() * 255).astype(np.uint8))

    def _views(
        self, image: Image.Image, control: list[Image.Image], camera_info: list[int]
    ) -> list[Image.Image]:
        """Paint the six views conditioned on the image and the mesh's normal and position maps."""
        size = self.settings.view_size
        count = len(control) // 2

        def stack(images: list[Image.Image]) -> torch.Tensor:
            arrays = [
                np.asarray(i.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0 for i in images
            ]
            tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).unsqueeze(0)
            return tensor.to(self.device, self.dtype)

        with self.stager.use("paint"):
            views = self.paint(
                image.resize((size, size)),
                num_inference_steps=self.settings.paint_steps,
                generator=torch.Generator(device=self.device).manual_seed(0),
                width=size,
                height=size,
                num_in_batch=count,
                camera_info_gen=[camera_info],
                camera_info_ref=[[0]],
                normal_imgs=stack(control[:count]),
                position_imgs=stack(control[count:]),
            ).images
        self.reporter.progress("paint_views", 0.8)
        return views

    @torch.no_grad()
    def texture(
        self, mesh: trimesh.Trimesh, image: Image.Image, modes: dict[str, Mode], reporter: Reporter
    ) -> tuple[trimesh.Trimesh, list[tuple[str, float]]]:
        from hy3dgen.texgen.differentiable_renderer.mesh_render import MeshRender
        from hy3dgen.texgen.pipelines import Hunyuan3DPaintPipeline

        started = time.perf_counter()
        self.reporter = reporter
        orchestrator = Hunyuan3DPaintPipeline.__new__(Hunyuan3DPaintPipeline)
        orchestrator.config = _Config(self.device, self.settings)
        orchestrator.render = MeshRender(
            default_resolution=self.settings.render_size,
            texture_size=self.settings.texture_size,
            device=str(self.device),
        )
        orchestrator.models = {"delight_model": self._delight, "multiview_model": self._views}
        with self.stager.request(modes):
            textured = orchestrator(mesh, image)
        reporter.progress("bake", 1.0)
        return textured, [("texture", time.perf_counter() - started)]
