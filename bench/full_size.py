"""Full-size architectures at random weights, written in each model's real on-disk layout.

The configs are the published ones (stabilityai/sd-turbo, stabilityai/sdxl-turbo,
stabilityai/TripoSR + facebook/dino-vitb16); the arithmetic is the same as with trained weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

SD_TURBO_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
)
SDXL_TURBO_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    norm_eps=1e-5,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    norm_num_groups=32,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    force_upcast=True,
)
OPENCLIP_H_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    hidden_act="gelu",
    projection_dim=512,
)
CLIP_L_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
OPENCLIP_BIGG_TEXT = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
TEXT_COMMON = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def _text(cls, spec: dict):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(**TEXT_COMMON, **spec))


def write_sd_turbo(folder: Path, device: str = "cuda") -> Path:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from services.imagegen.tiny import _scheduler_config, write_clip_tokenizer

    write_clip_tokenizer(folder / "tokenizer", pad_token="!")
    scheduler = EulerDiscreteScheduler.from_config(_scheduler_config(ancestral=False))  # numpy: on the CPU
    with torch.device(device):
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**VAE, scaling_factor=0.18215),
            text_encoder=_text(CLIPTextModel, OPENCLIP_H_TEXT),
            tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
            unet=UNet2DConditionModel(**SD_TURBO_UNET),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    pipe.to(torch.float16).save_pretrained(str(folder))
    return folder


def write_sdxl_turbo(folder: Path, device: str = "cuda") -> Path:
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from services.imagegen.tiny import _scheduler_config, write_clip_tokenizer

    write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    scheduler = EulerAncestralDiscreteScheduler.from_config(_scheduler_config(ancestral=True))  # on the CPU
    with torch.device(device):
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**VAE, scaling_factor=0.13025),
            text_encoder=_text(CLIPTextModel, CLIP_L_TEXT),
            text_encoder_2=_text(CLIPTextModelWithProjection, OPENCLIP_BIGG_TEXT),
            tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
            tokenizer_2=CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")),
            unet=UNet2DConditionModel(**SDXL_TURBO_UNET),
            scheduler=scheduler,
            image_encoder=None,
            feature_extractor=None,
            force_zeros_for_empty_prompt=True,
        )
    pipe.to(torch.float16).save_pretrained(str(folder))
    return folder


DINO_VITB16 = {
    "architectures": ["ViTModel"],
    "model_type": "vit",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
    "attention_probs_dropout_prob": 0.0,
    "hidden_dropout_prob": 0.0,
    "initializer_range": 0.02,
}


def triposr_model(device: str = "cpu"):
    """The published TripoSR architecture (config.yaml defaults) at random weights."""
    from transformers import ViTConfig

    from services.recon.families.triposr.config import TripoSRConfig
    from services.recon.families.triposr.model import TripoSR

    config = TripoSRConfig()  # the published config.yaml; its DINO config is written beside it
    with torch.device(device):
        return TripoSR(config, ViTConfig(**DINO_VITB16))


def shape_density_path(model, surface_radius: float = 0.6, lift: float = 30.0) -> None:
    """Make the density a smooth closed object, leaving every other weight random.

    Random triplanes give a density field broken into thousands of fragments (millions of
    faces at 256^3), far from what a trained model outputs. One path is set by hand instead:
    token channel 0 holds a radial pattern on each plane, passes the backbone through its
    residual (proj_out row 0 is zeroed) and the upsampler unchanged; decoder neuron 0 sums
    it over the three planes and carries it to the density output. The surface is then a
    sphere of `surface_radius` (of the grid half-size): about 150k faces at 256^3. The work
    per point is unchanged; colours still come from the random channels.
    """
    with torch.no_grad():
        side = model.config.tokenizer.plane_size
        axis = torch.linspace(-1.0, 1.0, side)
        u, v = torch.meshgrid(axis, axis, indexing="ij")
        model.tokenizer.embeddings[:, 0] = -4.0 * (u**2 + v**2)
        model.backbone.proj_out.weight[0].zero_()
        model.backbone.proj_out.bias[0] = 0.0
        up = model.post_processor.upsample
        up.weight[:, 0] = 0.0
        up.weight[0, 0] = 1.0
        up.bias[0] = 0.0
        channels = model.config.post_processor.out_channels
        linears = [m for m in model.decoder.layers if isinstance(m, torch.nn.Linear)]
        first, hidden, last = linears[0], linears[1:-1], linears[-1]
        first.weight[0].zero_()
        first.weight[0, [0, channels, 2 * channels]] = 1.0
        first.bias[0] = lift  # keeps the path positive, where SiLU is the identity
        for layer in hidden:
            layer.weight[0].zero_()
            layer.weight[0, 0] = 1.0
            layer.bias[0] = 0.0
            layer.weight[1:, 0] = 0.0  # the other neurons (colours) do not see the path
        # density = exp(raw - 1) = 25 where raw = 1 + ln 25, at the chosen radius.
        level = lift - 8.0 * surface_radius**2
        last.weight[0].zero_()
        last.weight[0, 0] = 1.0
        last.weight[1:, 0] = 0.0
        last.bias[0] = -(level - 1.0 - float(torch.log(torch.tensor(25.0))))


def write_triposr(folder: Path, device: str = "cpu", inside_share: float = 0.1, shaped: bool = True) -> Path:
    """Random weights in TripoSR's own initialisation (its decoder: kaiming_uniform, ReLU gain),
    saved in fp32 like the published file. `shaped` (the default) gives one smooth object
    (shape_density_path); otherwise the density bias is calibrated, in the dtype the service
    runs, so that `inside_share` of the volume is inside the raw random field."""
    from services.recon.families.triposr.loader import save

    model = triposr_model(device).eval()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with torch.no_grad():
        for layer in model.decoder.layers:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        if shaped:
            shape_density_path(model)
        else:
            run = model.to(dtype)
            codes = run.scene_codes(torch.full((1, 3, 512, 512), 0.5, device=device, dtype=dtype))
            axis = torch.linspace(-0.87, 0.87, 48, device=device)
            grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
            raw = run.query_raw(codes[0], grid)[:, 0].float()
            if not torch.isfinite(raw).all() or float(raw.max() - raw.min()) < 1e-3:
                raise RuntimeError(f"the random density field is unusable ({raw.min()}..{raw.max()})")
            target = torch.log(torch.tensor(25.0)) - model.config.renderer.density_bias
            shift = float(target - torch.quantile(raw, 1.0 - inside_share))
            model = model.float()
            model.decoder.layers[-1].bias[0] += shift
    save(model.float().cpu(), folder, dino_config=DINO_VITB16)
    return folder


def write_clip(folder: Path, device: str = "cuda") -> Path:
    """openai/clip-vit-base-patch32's architecture at random weights, with its processor files."""
    import json

    from transformers import CLIPConfig, CLIPModel

    from services.imagegen.tiny import CLIP_PREPROCESSOR, write_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(folder, pad_token="<|endoftext|>")
    config = CLIPConfig(
        text_config=dict(
            TEXT_COMMON,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            hidden_act="quick_gelu",
        ),
        projection_dim=512,
    )
    with torch.device(device):
        model = CLIPModel(config)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=2))
    return folder


# Hunyuan3D-2. Shape: the published v2-0 config (services/recon/families/hunyuan3d/published.py).
# Texture: the published folders' UNet configs were not available here; the multiview painter
# is hy3dgen's UNet2p5DConditionModel around an SD-2.x UNet (the wrapper hard-codes SD-2's
# 1024-wide text tokens and 1280-wide time embedding) and the delighter an InstructPix2Pix
# SD-1.5 UNet (8 input channels), the sizes those families have.
IP2P_UNET = dict(
    SD_TURBO_UNET, in_channels=8, cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False
)


def write_hunyuan3d(root: Path, device: str = "cuda") -> Path:
    import json

    from safetensors.torch import save_file

    from services.imagegen.tiny import write_clip_tokenizer
    from services.recon.families.hunyuan3d.compat import ensure_importable
    from services.recon.families.hunyuan3d.published import V2_0_SHAPE_CONFIG
    from services.recon.families.hunyuan3d.tiny import _scheduler

    ensure_importable()
    import yaml
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from hy3dgen.shapegen.pipelines import instantiate_from_config
    from hy3dgen.texgen.hunyuanpaint.unet.modules import UNet2p5DConditionModel
    from transformers import CLIPTextModel

    shape = root / "hunyuan3d-dit-v2-0"
    shape.mkdir(parents=True, exist_ok=True)
    (shape / "config.yaml").write_text(yaml.safe_dump(V2_0_SHAPE_CONFIG, sort_keys=False))
    tensors = {}
    with torch.device(device):
        for part in ("model", "vae", "conditioner"):
            module = instantiate_from_config(V2_0_SHAPE_CONFIG[part]).half()
            for key, value in module.state_dict().items():
                tensors[f"{part}.{key}"] = value.contiguous()
            del module
    save_file(tensors, str(shape / "model.fp16.safetensors"))
    del tensors

    for name, unet_config, text in (
        ("hunyuan3d-delight-v2-0", IP2P_UNET, CLIP_L_TEXT),
        ("hunyuan3d-paint-v2-0", SD_TURBO_UNET, OPENCLIP_H_TEXT),
    ):
        folder = root / name
        write_clip_tokenizer(folder / "tokenizer", pad_token="!")
        with torch.device(device):
            _text(CLIPTextModel, text).half().save_pretrained(folder / "text_encoder")
            AutoencoderKL(**VAE, scaling_factor=0.18215).half().save_pretrained(folder / "vae")
            unet = UNet2DConditionModel(**unet_config)
        if name.startswith("hunyuan3d-delight"):
            unet.half().save_pretrained(folder / "unet")
            _scheduler(folder, "EulerAncestralDiscreteScheduler")
            index = {
                "_class_name": "StableDiffusionInstructPix2PixPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
            }
        else:
            (folder / "unet").mkdir(parents=True, exist_ok=True)
            (folder / "unet" / "config.json").write_text(json.dumps(dict(unet.config), default=list))
            with torch.device(device):
                wrapped = UNet2p5DConditionModel(unet).half()
            torch.save(wrapped.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
            del wrapped
            _scheduler(folder, "DDIMScheduler")
            index = {
                "_class_name": "HunyuanPaintPipeline",
                "unet": ["modules", "UNet2p5DConditionModel"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            }
        common = {
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "vae": ["diffusers", "AutoencoderKL"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        (folder / "model_index.json").write_text(json.dumps({**common, **index}, indent=2))
        del unet
        torch.cuda.empty_cache()
    return root


# TRELLIS: the published architectures (services/recon/families/trellis/published.py) with
# upstream-like random initialisation (xavier linears; small, not zero, modulation and output
# layers, so the flows and decoders produce something), written as pipeline.json + ckpts/.
def _trellis_init(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if name.endswith(("adaLN_modulation.1", "out_layer")):
                torch.nn.init.normal_(module.weight, std=0.01)
            else:
                torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def write_trellis(root: Path, device: str = "cuda", text_size: str = "xlarge") -> dict[str, Path]:
    import json

    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from services.imagegen.tiny import write_clip_tokenizer
    from services.recon import dinov2
    from services.recon.families.trellis.networks import CLASSES
    from services.recon.families.trellis.published import image_large, text

    def write(folder: Path, pipeline: dict, models: dict, only: tuple[str, ...]) -> None:
        (folder / "ckpts").mkdir(parents=True, exist_ok=True)
        for key, (stem, cls, args) in models.items():
            if key not in only:
                continue
            with torch.device(device):
                model = CLASSES[cls](**args)
            _trellis_init(model)
            state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(folder / "ckpts" / f"{stem}.safetensors"))
            (folder / "ckpts" / f"{stem}.json").write_text(json.dumps({"name": cls, "args": args}))
            del model, state
        (folder / "pipeline.json").write_text(json.dumps(pipeline, indent=1))

    folders = {"image": root / "TRELLIS-image-large", "dinov2": root / "dinov2"}
    pipeline, models = image_large()
    write(folders["image"], pipeline, models, tuple(models))
    with torch.device(device):
        vit = dinov2.DinoVisionTransformer()
    folders["dinov2"].mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in vit.state_dict().items()}, folders["dinov2"] / dinov2.CHECKPOINT)
    del vit
    if text_size:
        folders["text"] = root / f"TRELLIS-text-{text_size}"
        folders["clip"] = root / "clip-vit-large-patch14"
        pipeline, models = text(text_size)
        # The text repositories name the image repository's decoders; here by relative path.
        for key in ("sparse_structure_decoder", "slat_decoder_mesh", "slat_decoder_gs"):
            pipeline["args"]["models"][key] = f"../TRELLIS-image-large/ckpts/{models[key][0]}"
        pipeline["args"]["text_cond_model"] = "../clip-vit-large-patch14"
        write(folders["text"], pipeline, models, ("sparse_structure_flow_model", "slat_flow_model"))
        write_clip_tokenizer(folders["clip"], pad_token="<|endoftext|>")  # byte-level: ids fit any vocab
        _text(CLIPTextModel, CLIP_L_TEXT).save_pretrained(folders["clip"])
    torch.cuda.empty_cache()
    return folders


def write_sam3d(root: Path, device: str = "cuda") -> Path:
    """facebook/sam-3d-objects' layout at full size (3.2 B parameters, fp16 as published) with
    random weights, plus a full-size random MoGe ViT-L in `checkpoints/moge/` (pipeline.yaml names
    it)."""
    from services.recon.families.sam3d.tiny import FULL, write_checkpoints
    from services.recon.moge import CHECKPOINT, MOGE_VITL_CONFIG, MoGeModel

    folder = root / "checkpoints"
    write_checkpoints(folder, FULL, _trellis_init, torch.float16, device, depth="moge")
    with torch.device(device):
        moge = MoGeModel(**MOGE_VITL_CONFIG)
    (folder / "moge").mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in moge.state_dict().items()}
    torch.save({"model_config": MOGE_VITL_CONFIG, "model": state}, folder / "moge" / CHECKPOINT)
    del moge, state
    torch.cuda.empty_cache()
    return root


def write_xcube(root: Path, device: str = "cuda") -> Path:
    """XCube's objaverse layout at full size with random fp16 weights (services/recon/families/xcube/
    tiny.configs(full=True)), plus an SD-2.1-shaped text tower and a small tokenizer."""
    from services.recon.families.xcube.tiny import write_layout

    def init(module: torch.nn.Module) -> None:
        _trellis_init(module)
        for param in module.parameters():  # zero-initialised output convs would predict 0
            if param.dim() > 1 and float(param.abs().max()) == 0.0:
                torch.nn.init.normal_(param, std=0.01)

    write_layout(root, True, init, torch.float16, device)
    torch.cuda.empty_cache()
    return root
