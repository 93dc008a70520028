"""Input image -> the square RGB picture TripoSR was trained on, prepared on the model's device.

An image with transparency is cropped to its object, centred, padded so the object spans
`foreground_ratio` of the side, then composited on 50% grey, as the reference pipeline does.
The work runs in torch where the model runs: on a GPU the 512 px resize is free, on the CPU
it is what it was.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threegen.errors import InvalidArgument


def prepare(
    image: Image.Image, size: int, foreground_ratio: float, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """-> (1,3,size,size) float tensor in [0,1] on `device`."""
    rgba = torch.from_numpy(np.array(image.convert("RGBA"))).to(device)  # (H,W,4) uint8
    alpha = rgba[..., 3]
    if bool((alpha < 255).any()):
        rows = alpha.any(dim=1).nonzero()
        cols = alpha.any(dim=0).nonzero()
        if len(rows) == 0:
            raise InvalidArgument([("image", "is fully transparent: there is no object to reconstruct")])
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = rgba[top:bottom, left:right]
        h, w = crop.shape[:2]
        canvas = round(max(h, w) / foreground_ratio)
        framed = torch.zeros((canvas, canvas, 4), dtype=torch.uint8, device=rgba.device)
        y, x = (canvas - h) // 2, (canvas - w) // 2
        framed[y : y + h, x : x + w] = crop
        pixels = framed.float() / 255.0
        rgb = pixels[..., :3] * pixels[..., 3:] + (1.0 - pixels[..., 3:]) * 0.5
    else:
        rgb = rgba[..., :3].float() / 255.0
    tensor = rgb.permute(2, 0, 1).unsqueeze(0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return tensor.clamp_(0.0, 1.0)
