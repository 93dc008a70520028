"""Input image -> the square RGB picture TripoSR was trained on.

An image with transparency is cropped to its object, centred, padded so the object spans
`foreground_ratio` of the side, then composited on 50% grey, as the reference pipeline does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threegen.images import has_transparency, resize_foreground


def composite_on_grey(image: Image.Image) -> np.ndarray:
    """RGBA -> float RGB in [0,1] over 0.5 grey."""
    rgba = np.asarray(image.convert("RGBA")).astype(np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    return rgb * alpha + (1.0 - alpha) * 0.5


def prepare(image: Image.Image, size: int, foreground_ratio: float) -> torch.Tensor:
    """-> (1,3,size,size) float tensor in [0,1]."""
    if has_transparency(image):
        array = composite_on_grey(resize_foreground(image, foreground_ratio))
    else:
        array = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return tensor.clamp_(0.0, 1.0)
