"""Make the upstream `hy3dgen` package importable and runnable wherever recon runs.

Two gaps, both environmental:

- hy3dgen's image conditioner imports `torchvision.transforms` at module level. GPU images have
  torchvision; CPU machines here have none that matches the CPU torch build (PyPI's wheel links
  CUDA libraries). When torchvision cannot be imported, an in-memory module supplies the four
  transforms the conditioner uses, computed with torch's antialiased bilinear resize exactly as
  torchvision's tensor path does.
- The texture baker imports `custom_rasterizer`, a CUDA extension absent from the wheel. When it is
  not installed, `rasterizer.py` (plain torch) is registered under that name.
"""

from __future__ import annotations

import enum
import importlib
import logging
import sys
import types

import torch
import torch.nn.functional as F

log = logging.getLogger("threegen.recon.hunyuan3d")

_ready = False
RASTERIZER = "custom_rasterizer (compiled)"


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class Resize:
    """Resize the shorter side to `size` (an int), like torchvision on tensors."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        self.size, self.mode, self.antialias = size, InterpolationMode(interpolation).value, antialias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if isinstance(self.size, int):
            short, long = (height, width) if height <= width else (width, height)
            new_short, new_long = self.size, int(self.size * long / short)
            size = (new_short, new_long) if height <= width else (new_long, new_short)
        else:
            size = tuple(self.size)
        align = False if self.mode != "nearest" else None
        return F.interpolate(x, size=size, mode=self.mode, align_corners=align, antialias=self.antialias)


class CenterCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top = round((height - self.size[0]) / 2.0)
        left = round((width - self.size[1]) / 2.0)
        return x[..., top : top + self.size[0], left : left + self.size[1]]


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


def _import_with_transforms(modules: tuple[str, ...]) -> None:
    """Import `modules` while a stand-in torchvision exists, then withdraw it.

    The stand-in is visible only during those imports (hy3dgen's conditioner keeps its
    reference), so no other library later believes torchvision is installed. transformers and
    diffusers cache whether it is, so they are imported first and keep using their own paths.
    """
    import importlib.machinery

    import diffusers.utils.import_utils  # noqa: F401
    from transformers.utils import is_torchvision_available

    is_torchvision_available()
    package = types.ModuleType("torchvision")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    for name, value in {
        "Compose": Compose,
        "Resize": Resize,
        "CenterCrop": CenterCrop,
        "Normalize": Normalize,
        "InterpolationMode": InterpolationMode,
    }.items():
        setattr(transforms, name, value)
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    log.info("torchvision is not importable here; hy3dgen uses threegen's transforms")


def ensure_importable() -> None:
    """Import hy3dgen's shape and texture packages (idempotent); call before using hy3dgen."""
    global _ready, RASTERIZER
    if _ready:
        return
    try:
        importlib.import_module("custom_rasterizer")
    except ImportError:
        from services.recon import rasterizer

        sys.modules["custom_rasterizer"] = rasterizer
        RASTERIZER = "threegen torch rasterizer"
    hy3dgen = ("hy3dgen.shapegen", "hy3dgen.texgen")
    try:
        importlib.import_module("torchvision.transforms")
    except Exception:  # ImportError, or a CUDA-only build failing to load its operators
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _import_with_transforms(hy3dgen)
    else:
        for module in hy3dgen:
            importlib.import_module(module)
    _ready = True
