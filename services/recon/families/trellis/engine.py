"""TRELLIS inference: condition -> sparse structure -> structured latent -> mesh and Gaussians.

Follows the upstream pipelines step by step: image conditioning with DINOv2-L/14-reg tokens
(layer-normed, pre-norm features of a 518x518 crop premultiplied by alpha) or text with CLIP's
last hidden state; two rectified-flow stages sampled with Euler steps on a rescaled time grid,
classifier-free guidance inside an interval of t; latents de-normalised with the pipeline's
mean/std. Noise comes from a per-request generator (upstream seeds the global RNG).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from services.recon import dinov2
from services.recon import sparse as sp
from services.recon.families.stages import FlowParams, Stage
from services.recon.families.trellis import loader
from services.recon.families.trellis.meshing import Mesh, features_to_mesh
from services.recon.gaussians import Splats, activate
from threegen.errors import InvalidArgument
from threegen.runtime.work import Reporter
from threegen.stopwatch import Laps
from threegen.weights import WeightsNotFound, resolve

log = logging.getLogger("threegen.recon.trellis")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrellisResult:
    mesh: Mesh | None
    splats: Splats | None
    voxels: int
    timings: list[tuple[str, float]] = field(default_factory=list)


def stage_defaults(spec: dict) -> Stage:
    params = spec.get("params", {})
    return Stage(
        int(params.get("steps", 50)),
        float(params.get("cfg_strength", 3.0)),
        tuple(params.get("cfg_interval", (0.0, 1.0))),
        float(params.get("rescale_t", 1.0)),
    )


def crop_image(image: Image.Image) -> Image.Image:
    """Upstream's preprocessing of an RGBA image: square crop 1.2x around the opaque part,
    518x518, colour premultiplied by alpha (black background)."""
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[:, :, 3]
    ys, xs = np.nonzero(alpha > 0.8 * 255)
    if len(xs) == 0:
        raise InvalidArgument([("image", "the image has no opaque object to reconstruct")])
    centre = ((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)
    size = int(max(xs.max() - xs.min(), ys.max() - ys.min()) * 1.2)
    box = (centre[0] - size // 2, centre[1] - size // 2, centre[0] + size // 2, centre[1] + size // 2)
    cropped = image.convert("RGBA").crop(box).resize((518, 518), Image.Resampling.LANCZOS)
    pixels = np.asarray(cropped).astype(np.float32) / 255
    return Image.fromarray((pixels[:, :, :3] * pixels[:, :, 3:4] * 255).astype(np.uint8))


class TrellisEngine:
    def __init__(
        self,
        files: loader.PipelineFiles,
        device: str,
        dinov2_weights: str = "",
        clip_source: str = "",
        shared: dict[str, torch.nn.Module] | None = None,
    ):
        """`shared` maps checkpoint paths to loaded models, so that the text pipeline reuses the
        image pipeline's decoders (the text repositories name the same files)."""
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.files = files
        args = files.args
        shared = {} if shared is None else shared
        self.models = {}
        for key, path in files.models.items():
            identity = str(path.resolve())
            if identity not in shared:
                shared[identity] = loader.build(path, self.dtype, self.device)
            self.models[key] = shared[identity]
        self.defaults = {
            "sparse_structure": stage_defaults(args["sparse_structure_sampler"]),
            "slat": stage_defaults(args["slat_sampler"]),
        }
        normalization = args["slat_normalization"]
        self.slat_mean = torch.tensor(normalization["mean"], device=self.device)[None]
        self.slat_std = torch.tensor(normalization["std"], device=self.device)[None]
        self.kind = files.kind
        if self.kind == "image":
            self._load_dinov2(args["image_cond_model"], dinov2_weights)
        else:
            self._load_clip(clip_source or args["text_cond_model"])

    def modules(self) -> list[torch.nn.Module]:
        found = list(self.models.values())
        found += [
            m for m in (getattr(self, "dinov2", None), getattr(self, "text_model", None)) if m is not None
        ]
        return found

    # -- conditioning ---------------------------------------------------------------------

    def _load_dinov2(self, name: str, weights: str) -> None:
        if name != "dinov2_vitl14_reg":
            raise loader.CheckpointMismatch(f"image_cond_model {name!r}: only dinov2_vitl14_reg is supported")
        path = Path(weights).expanduser() if weights else dinov2.hub_checkpoint()
        if path.is_dir():
            path = path / dinov2.CHECKPOINT
        if not path.is_file():
            raise WeightsNotFound(
                f"DINOv2 weights {path} not found (THREEGEN_RECON_TRELLIS_DINOV2; torch.hub keeps them as "
                f"$TORCH_HOME/hub/checkpoints/{dinov2.CHECKPOINT})"
            )
        config = dinov2.VITL14_REG
        state = torch.load(path, map_location="cpu", weights_only=True)
        dim = state["cls_token"].shape[-1]
        if dim != config.embed_dim:  # a smaller ViT (tests): derive its shape from the checkpoint
            config = dinov2.config_from_state(state)
        model = dinov2.DinoVisionTransformer(config)
        model.load_state_dict(state, strict=True)
        self.dinov2 = model.to(self.device, self.dtype).eval().requires_grad_(False)

    def _load_clip(self, source: str) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        beside = self.files.root / source  # a folder named relative to the repository
        folder = beside if beside.is_dir() else resolve(source, setting="THREEGEN_RECON_TRELLIS_CLIP")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        self.text_model = CLIPTextModel.from_pretrained(str(folder), dtype=self.dtype).to(self.device).eval()

    @torch.inference_mode()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        crop = crop_image(image)
        pixels = torch.from_numpy(np.asarray(crop).astype(np.float32) / 255).permute(2, 0, 1)[None]
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(self.device, self.dtype)
        size = self.dinov2.config.image_size
        if pixels.shape[-1] != size:
            pixels = F.interpolate(pixels.float(), size=(size, size), mode="bicubic", antialias=True).to(
                self.dtype
            )
        tokens = self.dinov2.tokens(pixels).float()
        return F.layer_norm(tokens, tokens.shape[-1:])

    @torch.inference_mode()
    def encode_text(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(
            [prompt], max_length=77, padding="max_length", truncation=True, return_tensors="pt"
        )
        return self.text_model(input_ids=ids.input_ids.to(self.device)).last_hidden_state.float()

    # -- sampling ---------------------------------------------------------------------------

    def _sample(self, model, noise, cond, neg, stage: Stage, reporter: Reporter, step_name: str, span):
        times = np.linspace(1, 0, stage.steps + 1)
        times = stage.rescale_t * times / (1 + (stage.rescale_t - 1) * times)
        x = noise
        cond, neg = cond.to(self.dtype), neg.to(self.dtype)
        for i in range(stage.steps):
            t, t_prev = float(times[i]), float(times[i + 1])
            tt = torch.full((1,), 1000 * t, device=self.device, dtype=torch.float32)
            v = self._velocity(model, x, tt, cond)
            if stage.cfg_interval[0] <= t <= stage.cfg_interval[1] and stage.cfg_strength:
                negative = self._velocity(model, x, tt, neg)
                v = (1 + stage.cfg_strength) * v - stage.cfg_strength * negative
            x = (
                x.replace(x.feats - (t - t_prev) * v)
                if isinstance(x, sp.SparseTensor)
                else x - (t - t_prev) * v
            )
            reporter.progress(
                step_name, span[0] + (span[1] - span[0]) * (i + 1) / stage.steps, f"step {i + 1}"
            )
        return x

    @staticmethod
    def _velocity(model, x, t, cond):
        out = model(x, t, cond)
        return out.feats.float() if isinstance(out, sp.SparseTensor) else out.float()

    @torch.inference_mode()
    def run(
        self, image: Image.Image | None, prompt: str, params: FlowParams, reporter: Reporter
    ) -> TrellisResult:
        lap = Laps(self.device)

        cond = self.encode_image(image) if self.kind == "image" else self.encode_text(prompt)
        neg = torch.zeros_like(cond) if self.kind == "image" else self.encode_text("")
        lap("encode")
        reporter.progress("encode", 0.05)
        generator = torch.Generator(device=self.device).manual_seed(params.seed)

        flow = self.models["sparse_structure_flow_model"]
        res = flow.resolution
        noise = torch.randn(1, flow.in_channels, res, res, res, generator=generator, device=self.device)
        stage = params.sparse_structure or self.defaults["sparse_structure"]
        latent = self._sample(
            flow, noise.to(self.dtype), cond, neg, stage, reporter, "sparse_structure", (0.05, 0.35)
        )
        occupancy = self.models["sparse_structure_decoder"](latent.to(self.dtype))
        coords = torch.argwhere(occupancy > 0)[:, [0, 2, 3, 4]].int()
        lap("sparse_structure")
        if coords.shape[0] == 0:
            raise InvalidArgument([("image" if self.kind == "image" else "prompt",
                                    "the model found no occupied voxel for this input")])  # fmt: skip

        slat_model = self.models["slat_flow_model"]
        feats = torch.randn(coords.shape[0], slat_model.in_channels, generator=generator, device=self.device)
        noise = sp.SparseTensor(feats, coords)
        stage = params.slat or self.defaults["slat"]
        slat = self._sample(slat_model, noise, cond, neg, stage, reporter, "structured_latent", (0.35, 0.8))
        slat = slat.replace((slat.feats * self.slat_std + self.slat_mean).to(self.dtype))
        lap("structured_latent")

        mesh = splats = None
        if params.want_mesh:
            decoder = self.models["slat_decoder_mesh"]
            fine = decoder(sp.SparseTensor(slat.feats, slat.coords))
            mesh = features_to_mesh(fine, decoder.resolution * 4, decoder.use_color,
                                    "image" if self.kind == "image" else "prompt")  # fmt: skip
            lap("decode_mesh")
            reporter.progress("decode_mesh", 0.9)
        if params.want_gaussians:
            decoder = self.models["slat_decoder_gs"]
            raw = decoder(sp.SparseTensor(slat.feats, slat.coords))[0]
            splats = activate(raw, decoder.rep_config)
            lap("decode_gaussians")
            reporter.progress("decode_gaussians", 0.95)
        return TrellisResult(mesh, splats, int(coords.shape[0]), lap.timings)
