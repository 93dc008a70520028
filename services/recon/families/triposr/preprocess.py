"""Input image -> the square RGB picture TripoSR was trained on.

An image with transparency is cropped to its object, centred, padded so the object spans
`foreground_ratio` of the side, then composited on 50% grey, as the reference pipeline does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threegen.errors import InvalidArgument


def has_transparency(image: Image.Image) -> bool:
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return False
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return bool((alpha < 255).any())


def resize_foreground(image: Image.Image, ratio: float) -> Image.Image:
    """Crop RGBA to the alpha bounding box, pad to a square whose side is bbox / ratio."""
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[..., 3]
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if len(rows) == 0:
        raise InvalidArgument([("image", "is fully transparent: there is no object to reconstruct")])
    crop = rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape[:2]
    side = max(h, w)
    canvas = round(side / ratio)
    out = np.zeros((canvas, canvas, 4), dtype=np.uint8)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    out[top : top + h, left : left + w] = crop
    return Image.fromarray(out, "RGBA")


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
