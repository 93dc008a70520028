"""XCube inference: text -> coarse 16^3 latent -> 128^3 voxels with normals -> 512^3 voxels with normals.

Follows XCube's `sample_objaverse.py` + `evaluation_api`: the prompt through the SD-2.1 text tower
(OpenCLIP ViT-H text in HF CLIP format), its last hidden state zero-padded to 77 tokens with a
key mask; the coarse stage denoises a dense 16^3 x 8 latent (ijk -8..7, voxel 0.0625) with DDIM
(leading timesteps, v-prediction, eta 1: noise is added at every step, as XCube's scheduler
does by default) and classifier-free guidance `cond + s * (cond - uncond)` against the null text
embedding (s = 1 means none); the latent divided by `scale_factor` is decoded by the coarse VAE
to a <=128^3 grid with normals. The fine stage denoises an 8-channel latent on that grid, its
input the latent, the raw integer ijk and the unit normals, with text cross-attention and no
guidance, and the fine VAE decodes it to <=512^3 with normals. Points are voxel centres:
world = (ijk + 0.5) * voxel size. The UNets run with their EMA weights, as `--ema` does. Noise
comes from a per-request generator (XCube seeds the global RNG).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from services.recon.families.xcube import loader
from services.recon.families.xcube.vae import grid_from_ijk, ijk_of
from threegen.errors import InvalidArgument
from threegen.runtime.work import Reporter
from threegen.stopwatch import Laps
from threegen.weights import check_state_dict, resolve

log = logging.getLogger("threegen.recon.xcube")
MAX_TEXT = 77


@dataclass
class XCubeParams:
    steps: int = 100
    guidance: float = 7.5
    use_fine: bool = True
    seed: int = 0


@dataclass
class PointSet:
    xyz: np.ndarray  # (N, 3) float32, world units inside about [-0.5, 0.5]^3
    normals: np.ndarray  # (N, 3) float32, unit length


@dataclass
class XCubeResult:
    coarse: PointSet
    fine: PointSet | None
    timings: list[tuple[str, float]] = field(default_factory=list)


def make_scheduler(config: dict):
    from diffusers import DDIMScheduler

    spec = config.get("network", {}).get("scheduler", {})
    return DDIMScheduler(
        num_train_timesteps=int(spec.get("num_train_timesteps", config.get("num_train_timesteps", 1000))),
        beta_start=float(spec.get("beta_start", 1e-4)),
        beta_end=float(spec.get("beta_end", 0.02)),
        beta_schedule=str(spec.get("beta_schedule", "linear")),
        prediction_type=str(spec.get("prediction_type", "v_prediction")),
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )


def unit(normals: torch.Tensor) -> torch.Tensor:
    """Normals scaled to unit length, as XCube does (+1e-6 against zero vectors)."""
    normals = normals.float()
    return normals / (normals.norm(dim=1, keepdim=True) + 1e-6)


def pad_tokens(embedding: torch.Tensor, length: int = MAX_TEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, D) -> (length, D) zero-padded and the (length,) key mask that is True on the L rows."""
    rows = min(embedding.shape[0], length)
    padded = embedding.new_zeros(length, embedding.shape[1])
    padded[:rows] = embedding[:rows]
    mask = torch.zeros(length, dtype=torch.bool, device=embedding.device)
    mask[:rows] = True
    return padded, mask


class XCubeEngine:
    def __init__(self, files: loader.XCubeFiles, device: str, text_encoder: str, tokenizer: str,
                 trusted: bool = False):  # fmt: skip
        from services.recon.families.xcube.unet_dense import DenseUNet, dense_unet_args
        from services.recon.families.xcube.unet_sparse import SparseUNet, sparse_unet_args
        from services.recon.families.xcube.vae import XCubeVAE

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.files = files
        self.coarse_unet, self.coarse_vae, self.coarse_scale = self._stage(
            files.coarse,
            DenseUNet(**dense_unet_args(files.coarse.config, vae_config=files.coarse.vae_config)),
            XCubeVAE,
            trusted,
        )
        self.fine = None
        if files.fine is not None:
            self.fine = self._stage(
                files.fine,
                SparseUNet(**sparse_unet_args(files.fine.config, vae_config=files.fine.vae_config)),
                XCubeVAE,
                trusted,
            )
        self._load_text(text_encoder, tokenizer)

    def _stage(self, stage: loader.StageFiles, unet: torch.nn.Module, vae_class, trusted: bool):
        state = loader.load_checkpoint(stage.checkpoint, trusted)
        net_state, vae_state, scale = loader.split_state(state, unet)
        name = f"{stage.checkpoint.parent.name}/{stage.checkpoint.name}"
        check_state_dict(unet, net_state, f"{name} (unet) does not match its config")
        unet.load_state_dict(net_state, strict=True)
        vae = vae_class(stage.vae_config)
        check_state_dict(vae, vae_state, f"{name} (vae) does not match its vae_config")
        vae.load_state_dict(vae_state, strict=True)
        ready = [m.to(self.device, self.dtype).eval().requires_grad_(False) for m in (unet, vae)]
        return ready[0], ready[1], scale

    def modules(self) -> list[torch.nn.Module]:
        found = [self.coarse_unet, self.coarse_vae, self.text_model]
        return found + (list(self.fine[:2]) if self.fine else [])

    # -- text ------------------------------------------------------------------------------

    def _load_text(self, text_encoder: str, tokenizer: str) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = resolve(text_encoder, setting="THREEGEN_RECON_XCUBE_TEXT_ENCODER",
                         allow_patterns=["text_encoder/*"])  # fmt: skip
        if (folder / "text_encoder").is_dir():
            folder = folder / "text_encoder"
        self.text_model = CLIPTextModel.from_pretrained(str(folder)).to(self.device, self.dtype).eval()
        words = resolve(tokenizer, setting="THREEGEN_RECON_XCUBE_TOKENIZER",
                        allow_patterns=["*.json", "*.txt"])  # fmt: skip
        self.tokenizer = CLIPTokenizer.from_pretrained(str(words))
        null = None
        if self.files.null_embedding is not None:
            data = torch.load(self.files.null_embedding, map_location="cpu", weights_only=True)
            null = data.get("text_embed_sd_model.last_hidden_state")
        if null is None:  # XCube's file holds the empty prompt's two tokens (BOS, EOS)
            null = self._hidden("")
        self.null = pad_tokens(null.to(self.device, torch.float32))

    @torch.inference_mode()
    def _hidden(self, prompt: str) -> torch.Tensor:
        inputs = self.tokenizer(
            [prompt], padding=True, max_length=MAX_TEXT, truncation=True, return_tensors="pt"
        )
        out = self.text_model(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.last_hidden_state[0].float()

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_tokens(self._hidden(prompt))

    # -- sampling ---------------------------------------------------------------------------

    def _denoise(
        self, predict, count: int, config: dict, params: XCubeParams, generator, on_step
    ) -> torch.Tensor:
        scheduler = make_scheduler(config)
        scheduler.set_timesteps(params.steps, device=self.device)
        latents = torch.randn(count, 8, generator=generator, device=self.device)
        for i, t in enumerate(scheduler.timesteps):
            prediction = predict(latents, t)
            latents = scheduler.step(prediction, t, latents, eta=1.0, generator=generator).prev_sample
            on_step(i + 1, len(scheduler.timesteps))
        return latents

    @torch.inference_mode()
    def run(self, prompt: str, params: XCubeParams, reporter: Reporter) -> XCubeResult:
        lap = Laps(self.device)
        text, mask = self.encode(prompt)
        null, null_mask = self.null
        lap("encode_text")
        generator = torch.Generator(device=self.device).manual_seed(params.seed)

        ijk = self.coarse_vae.latent_ijk(self.device)  # the dense latent block, i-major
        side = round(ijk.shape[0] ** (1 / 3))
        context, key_mask = text[None].to(self.dtype), mask[None]
        null_context, null_key_mask = null[None].to(self.dtype), null_mask[None]

        def coarse_prediction(latents: torch.Tensor, t) -> torch.Tensor:
            dense = latents.T.reshape(1, -1, side, side, side).to(self.dtype)
            steps = t.reshape(1).to(self.device)
            cond = self.coarse_unet(dense, steps, context, key_mask).float()
            if params.guidance != 1.0:
                uncond = self.coarse_unet(dense, steps, null_context, null_key_mask).float()
                cond = cond + params.guidance * (cond - uncond)
            return cond.reshape(cond.shape[1], -1).T

        span = 0.5 if params.use_fine else 0.85
        latents = self._denoise(
            coarse_prediction, ijk.shape[0], self.files.coarse.config, params, generator,
            lambda i, n: reporter.progress("coarse", 0.05 + span * i / n, f"step {i}"),
        ) / self.coarse_scale  # fmt: skip
        coarse = self.coarse_vae.decode(grid_from_ijk(ijk, latents.to(self.dtype)))
        if coarse.grid.coords.shape[0] == 0:
            raise InvalidArgument([("prompt", "the coarse model produced no voxel for this prompt")])
        lap("coarse")
        result = XCubeResult(self._points(coarse, self.coarse_vae), None)
        if params.use_fine and self.fine is not None:
            unet, vae, scale = self.fine
            grid_ijk = ijk_of(coarse.grid)
            extra = torch.cat([grid_ijk.float(), unit(coarse.normals)], dim=1)

            def fine_prediction(latents: torch.Tensor, t) -> torch.Tensor:
                x = coarse.grid.replace(torch.cat([latents, extra], dim=1).to(self.dtype))
                return unet(x, t.reshape(1).to(self.device), context, key_mask).feats.float()

            latents = self._denoise(
                fine_prediction, grid_ijk.shape[0], self.files.fine.config, params, generator,
                lambda i, n: reporter.progress("fine", 0.55 + 0.4 * i / n, f"step {i}"),
            ) / scale  # fmt: skip
            fine = vae.decode(coarse.grid.replace(latents.to(self.dtype)))
            lap("fine")
            result.fine = self._points(fine, vae)
        result.timings = lap.timings
        return result

    @staticmethod
    def _points(decoded, vae) -> PointSet:
        xyz = vae.voxel_centres(decoded.grid)
        return PointSet(xyz.float().cpu().numpy(), unit(decoded.normals).cpu().numpy())
