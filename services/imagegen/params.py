"""imagegen request -> engine parameters, validated (pure Python: the gateway uses it too)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from threegen.errors import Violations
from threegen.imagegen.v1 import imagegen_pb2

MAX_PROMPT_CHARS = 1000
MAX_VIEWS = 8
MAX_LORAS = 8
MODEL_BY_ENUM = {
    imagegen_pb2.IMAGE_MODEL_SD_TURBO: "sd-turbo",
    imagegen_pb2.IMAGE_MODEL_SDXL_TURBO: "sdxl-turbo",
}
LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ImageParams:
    prompt: str
    seed: int
    model: str = "sd-turbo"
    negative_prompt: str = ""
    steps: int = 2
    guidance_scale: float = 0.0
    width: int = 512
    height: int = 512
    num_views: int = 1
    top_k: int = 1
    loras: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    remove_background: bool = False
    foreground_ratio: float = 0.85

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one forward pass."""
        return (self.model, self.steps, self.guidance_scale, self.width, self.height, self.loras)


def check_prompt(prompt: str, v: Violations, field: str = "prompt") -> None:
    if v.check(bool(prompt.strip()), field, "required: describe what to make"):
        v.check(
            len(prompt) <= MAX_PROMPT_CHARS, field, f"exceeds maximum length of {MAX_PROMPT_CHARS} characters"
        )


def check_options(
    o: imagegen_pb2.ImageOptions, v: Violations, *, default_model: str, max_side: int, prefix: str = "options"
) -> ImageParams:
    """Validate ImageOptions into params (prompt and seed left empty)."""
    v.check(
        len(o.negative_prompt) <= MAX_PROMPT_CHARS,
        f"{prefix}.negative_prompt",
        f"exceeds maximum length of {MAX_PROMPT_CHARS} characters",
    )
    if o.model == imagegen_pb2.IMAGE_MODEL_UNSPECIFIED:
        model = default_model
    else:
        model = MODEL_BY_ENUM.get(o.model, "")
        v.check(
            bool(model),
            f"{prefix}.model",
            f"unknown model {o.model}; use IMAGE_MODEL_SD_TURBO or IMAGE_MODEL_SDXL_TURBO",
        )
    steps = o.steps or 2
    v.in_range(steps, 1, 4, f"{prefix}.steps")
    v.in_range(o.guidance_scale, 0.0, 20.0, f"{prefix}.guidance_scale")
    sizes = {}
    for name in ("width", "height"):
        value = getattr(o, name) or 512
        sizes[name] = value
        v.check(
            64 <= value <= max_side and value % 64 == 0,
            f"{prefix}.{name}",
            f"must be a multiple of 64 between 64 and {max_side}, got {value}",
        )
    views = o.num_views or 1
    v.in_range(views, 1, MAX_VIEWS, f"{prefix}.num_views")
    top_k = o.top_k or min(2, views)
    v.check(top_k <= views, f"{prefix}.top_k", f"must be at most num_views ({views}), got {top_k}")
    v.check(len(o.loras) <= MAX_LORAS, f"{prefix}.loras", f"at most {MAX_LORAS} LoRAs, got {len(o.loras)}")
    loras = []
    for index, lora in enumerate(o.loras):
        where = f"{prefix}.loras[{index}]"
        v.check(
            bool(LORA_NAME.match(lora.name)) and ".." not in lora.name,
            f"{where}.name",
            "must be a file name in the LoRA folder (letters, digits, '.', '_', '-'), not a path",
        )
        scale = lora.scale or 1.0
        v.in_range(scale, -4.0, 4.0, f"{where}.scale")
        loras.append((lora.name.removesuffix(".safetensors"), scale))
    v.check(len({n for n, _ in loras}) == len(loras), f"{prefix}.loras", "names a LoRA twice")
    ratio = o.foreground_ratio or 0.85
    v.in_range(ratio, 0.5, 1.0, f"{prefix}.foreground_ratio")
    return ImageParams(
        prompt="",
        seed=0,
        model=model,
        negative_prompt=o.negative_prompt,
        steps=steps,
        guidance_scale=o.guidance_scale,
        width=sizes["width"],
        height=sizes["height"],
        num_views=views,
        top_k=top_k,
        loras=tuple(loras),
        remove_background=o.remove_background,
        foreground_ratio=ratio,
    )


def validate(request: imagegen_pb2.GenerateRequest, *, default_model: str, max_side: int) -> ImageParams:
    """GenerateRequest -> params, or INVALID_ARGUMENT listing every bad field."""
    v = Violations()
    check_prompt(request.prompt, v)
    params = check_options(request.options, v, default_model=default_model, max_side=max_side)
    if request.HasField("png_level"):
        v.check(request.png_level <= 9, "png_level", f"must be a zlib level 0..9, got {request.png_level}")
    v.raise_if_any()
    params.prompt = request.prompt
    params.seed = request.seed if request.HasField("seed") else secrets.randbelow(2**32)
    return params
