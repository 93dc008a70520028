"""SAM 3D Objects input preparation: image + mask + point map -> the condition embedders' tensors.

Reproduces, in plain numpy/torch, what upstream's ``InferencePipelinePointMap`` does between
``run(image, mask, pointmap=...)`` and the ss / slat condition embedders, with the published
pipeline.yaml (``ss_preprocessor`` and ``slat_preprocessor``):

- the mask becomes the alpha channel; alpha / 255 is the float mask handed to the embedders;
- the point map (MoGe's, or one supplied) is turned into the PyTorch3D camera convention (x and y
  negated) and resized nearest to the image;
- the point map is normalised object-centrically (ObjectCentricSSI, ``use_scene_scale``): the shift
  is the per-axis median of the points under the mask (alpha > 0.5), the scale the median over the
  whole image of each point's largest absolute offset from that shift;
- the object crop: a square box 1.2x the mask bbox around its centre (upstream's integer
  arithmetic, zero fill outside the image), padded to square (NaN for the point map), resized to
  ``size``; the full image is padded to square, centred, and resized the same way. Images resize
  bilinearly with antialiasing (torchvision's tensor ``Resize`` default), masks and point maps nearest.

Quirks kept on purpose because the model was trained with them: the full point map is padded to
square with 0, not NaN, and crop regions outside the image are 0 in the point map too; the mask
is not binarised (soft alpha reaches the embedders as is). Checked against upstream's functions on
synthetic inputs (see the family README).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

BOX_SIZE_FACTOR = 1.2
EMBEDDER_KEYS = ("image", "mask", "rgb_image", "rgb_image_mask", "pointmap", "rgb_pointmap")


# -- mask ------------------------------------------------------------------------------------------


def merge_mask(rgba_or_rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Return an H x W x 4 uint8 image whose alpha channel selects the object.

    With a mask, it replaces the alpha: bool masks as they are, integer masks where > 0, float
    masks where > 0.5 (the selection becomes alpha 255, the rest 0). A mask of another size is
    resized nearest to the image, as the PyPI ``sam3d`` wrapper does (upstream itself asserts equal
    sizes). A multi-channel mask uses its last channel, like upstream's ``load_mask``.
    Without a mask an RGBA image keeps its own alpha (upstream's ``run(image, mask=None)``); an RGB
    image is taken as all object (alpha 255), as upstream's warm-up does.
    """
    image = np.asarray(rgba_or_rgb)
    if image.dtype != np.uint8:
        raise ValueError(f"the image must be 8-bit (uint8), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"the image must be H x W x 3 (RGB) or H x W x 4 (RGBA), got shape {image.shape}")
    height, width = image.shape[:2]
    if mask is None:
        if image.shape[2] == 4:
            return np.ascontiguousarray(image)
        alpha = np.full((height, width), 255, np.uint8)
    else:
        alpha = _mask_to_alpha(np.asarray(mask), height, width)
    return np.concatenate([image[:, :, :3], alpha[:, :, None]], axis=2)


def _mask_to_alpha(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.ndim == 3:
        mask = mask[:, :, -1]
    if mask.ndim != 2:
        raise ValueError(f"the mask must be H x W (or H x W x C), got shape {mask.shape}")
    if mask.dtype == bool:
        selected = mask
    elif np.issubdtype(mask.dtype, np.integer):
        selected = mask > 0
    elif np.issubdtype(mask.dtype, np.floating):
        selected = mask > 0.5
    else:
        raise ValueError(f"the mask must be boolean, integer or float, got {mask.dtype}")
    alpha = selected.astype(np.uint8) * 255
    if alpha.shape != (height, width):
        alpha = np.asarray(Image.fromarray(alpha).resize((width, height), Image.NEAREST))
    return alpha


def validate_mask(rgba: np.ndarray) -> None:
    """Raise ValueError for a mask (alpha channel) that upstream would crash on.

    Upstream needs at least one pixel with alpha > 127 (the point-map normalisation averages over
    them; none -> ``RuntimeError`` in a reduction) and a bounding box of the non-zero alpha whose
    max-min pixel index differs by 2 or more along each axis (else ``BoundingBoxError``).
    """
    alpha = np.asarray(rgba)[:, :, 3]
    if not (alpha > 127).any():
        raise ValueError(
            "the mask is empty: no pixel is selected (alpha above 50%); pass a mask that covers the object"
        )
    ys, xs = np.nonzero(alpha)
    span_x, span_y = int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
    if span_x < 3 or span_y < 3:
        raise ValueError(
            f"the mask is too small: it spans {span_x}x{span_y} pixels, and SAM 3D needs an object "
            "at least 3 pixels wide and 3 pixels high; pass a larger mask or a higher-resolution image"
        )


# -- point map -------------------------------------------------------------------------------------

# look_at_view_transform(eye=(0,0,-1), at=(0,0,0), up=(0,-1,0)) gives z = (0,0,1),
# x = up x z = (-1,0,0), y = z x x = (0,-1,0): the rotation diag(-1,-1,1), applied to row vectors.
_CAMERA_FLIP = (-1.0, -1.0, 1.0)


def to_camera_pointmap(points: torch.Tensor) -> torch.Tensor:
    """Turn MoGe's points (H, W, 3; x right, y down, z forward) into the PyTorch3D camera
    convention upstream feeds the model: x and y negated.

    Upstream applies the flip as a homogeneous 4x4 product, so a point with any non-finite
    coordinate comes out all NaN (inf * 0); that is kept.
    """
    points = points.float()
    flipped = points * points.new_tensor(_CAMERA_FLIP)
    finite = torch.isfinite(points).all(dim=-1, keepdim=True)
    return torch.where(finite, flipped, torch.full_like(flipped, float("nan")))


def resize_pointmap(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest resize of an (H, W, 3) point map to (height, width), as upstream does for a
    point map supplied with the image."""
    if tuple(points.shape[:2]) == (height, width):
        return points
    grid = points.permute(2, 0, 1)[None]
    return F.interpolate(grid, size=(height, width), mode="nearest")[0].permute(1, 2, 0)


def ssi_scale_shift(pointmap: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ObjectCentricSSI moments of a (3, H, W) point map under a (H, W) float mask.

    shift: per-axis median (torch's lower median) of the points where mask > 0.5; scale: the
    median over all pixels of max(|p - shift|) over the axes, repeated for x, y, z. When no masked
    point is finite upstream falls back to scale 1, shift 0.
    """
    flat = pointmap.reshape(3, -1)
    inside = flat[:, mask.reshape(-1) > 0.5]
    if inside.numel() == 0:
        raise ValueError("the mask is empty: no pixel is selected (alpha above 50%)")
    if not torch.isfinite(inside).any():
        return torch.ones(3, dtype=flat.dtype), torch.zeros(3, dtype=flat.dtype)
    shift = inside.nanmedian(dim=-1).values
    largest = (flat - shift[:, None]).abs().max(dim=0).values  # NaN where any axis is NaN
    scale = largest.nanmedian(dim=-1).values.expand(3).clone()
    return scale, shift


def normalise_pointmap(pointmap: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(p - shift) / scale per axis, computed as upstream's inverse transform does:
    p * (1/scale) + (-shift * (1/scale)); a point with a non-finite coordinate becomes all NaN."""
    inverse = 1.0 / scale
    offset = -shift * inverse
    out = pointmap * inverse[:, None, None] + offset[:, None, None]
    finite = torch.isfinite(pointmap).all(dim=0, keepdim=True)
    return torch.where(finite, out, torch.full_like(out, float("nan")))


# -- crop, pad, resize -----------------------------------------------------------------------------


def crop_box(mask: torch.Tensor, factor: float = BOX_SIZE_FACTOR) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of upstream's object crop for a (H, W) mask: a square of
    int(max(bbox_w, bbox_h, 2) * factor) around the bbox centre of the non-zero pixels, with
    bbox_w = max_x - min_x, and python int() (truncation toward zero) on the corners."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if xs.numel() == 0:
        raise ValueError("the mask is empty: no pixel is selected")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(
            f"the mask is too small: it spans {x1 - x0 + 1}x{y1 - y0 + 1} pixels, and SAM 3D needs an "
            "object at least 3 pixels wide and 3 pixels high"
        )
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = int(max(x1 - x0, y1 - y0, 2) * factor) // 2
    return int(cx - half), int(cy - half), int(cx + half), int(cy + half)


def _crop(t: torch.Tensor, box: tuple[int, int, int, int], fill: float = 0.0) -> torch.Tensor:
    """Crop (C, H, W) to box, filling what lies outside the image with ``fill``."""
    left, top, right, bottom = box
    height, width = t.shape[-2:]
    out = t.new_full((t.shape[0], bottom - top, right - left), fill)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - top : sy1 - top, sx0 - left : sx1 - left] = t[:, sy0:sy1, sx0:sx1]
    return out


def _pad_square(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Pad (C, H, W) to square, the odd pixel going to the bottom / right."""
    height, width = t.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pad = (left, side - width - left, top, side - height - top)
    return F.pad(t, pad, mode="constant", value=fill) if any(pad) else t


def _resize(t: torch.Tensor, size: int, nearest: bool) -> torch.Tensor:
    """torchvision ``Resize(size)`` on a square (C, H, W) float tensor: bilinear with antialias,
    or nearest (PyTorch's legacy 'nearest'); a tensor already of that size is returned as is."""
    if tuple(t.shape[-2:]) == (size, size):
        return t
    if nearest:
        return F.interpolate(t[None], size=(size, size), mode="nearest")[0]
    return F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _square(t: torch.Tensor, size: int, nearest: bool, fill: float = 0.0) -> torch.Tensor:
    return _resize(_pad_square(t, fill), size, nearest)


def _image_and_mask(rgba: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rgba = np.asarray(rgba)
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an H x W x 4 uint8 image (see merge_mask), got {rgba.shape} {rgba.dtype}")
    validate_mask(rgba)
    chw = torch.from_numpy((rgba / 255).astype(np.float32)).permute(2, 0, 1).contiguous()
    return chw[:3], chw[3:4]


def _image_inputs(rgb: torch.Tensor, mask: torch.Tensor, size: int, box) -> dict[str, torch.Tensor]:
    """The four image/mask tensors shared by both stages (each 1 x C x size x size float32)."""
    crop_rgb, crop_mask = _pad_square(_crop(rgb, box)), _pad_square(_crop(mask, box))
    return {
        "image": _resize(crop_rgb, size, nearest=False)[None],
        "mask": _resize(crop_mask, size, nearest=True)[None],
        "rgb_image": _square(rgb, size, nearest=False)[None],
        "rgb_image_mask": _square(mask, size, nearest=True)[None],
    }


def prepare_ss_inputs(rgba: np.ndarray, pointmap: torch.Tensor, size: int = 770) -> dict[str, torch.Tensor]:
    """Stage-1 (sparse structure) condition inputs, as upstream's ss_preprocessor produces them.

    ``rgba``: H x W x 4 uint8 (see ``merge_mask``); ``pointmap``: (h, w, 3) in the camera
    convention of ``to_camera_pointmap``, resized nearest to H x W when its size differs.
    Returns float32 tensors: image / rgb_image (1, 3, size, size) in [0, 1], mask / rgb_image_mask
    (1, 1, size, size) = alpha / 255, pointmap / rgb_pointmap (1, 3, size, size) normalised (NaN
    where invalid or padded), and pointmap_scale / pointmap_shift / rgb_pointmap_scale /
    rgb_pointmap_shift (1, 3) for the pose decoder (the rgb_ pair equals the other: upstream
    overrides it with the crop's moments).
    """
    rgb, mask = _image_and_mask(rgba)
    height, width = rgb.shape[-2:]
    if pointmap.ndim != 3 or pointmap.shape[-1] != 3:
        raise ValueError(f"the point map must be H x W x 3, got shape {tuple(pointmap.shape)}")
    points = resize_pointmap(pointmap.float().cpu(), height, width).permute(2, 0, 1)
    scale, shift = ssi_scale_shift(points, mask[0])
    normalised = normalise_pointmap(points, scale, shift)
    box = crop_box(mask[0])
    out = _image_inputs(rgb, mask, size, box)
    crop_points = _pad_square(_crop(normalised, box, fill=0.0), fill=float("nan"))
    out["pointmap"] = _resize(crop_points, size, nearest=True)[None]
    out["rgb_pointmap"] = _square(normalised, size, nearest=True, fill=0.0)[None]
    out["pointmap_scale"] = scale[None]
    out["pointmap_shift"] = shift[None]
    out["rgb_pointmap_scale"] = scale[None].clone()
    out["rgb_pointmap_shift"] = shift[None].clone()
    return out


def prepare_slat_inputs(rgba: np.ndarray, size: int = 770) -> dict[str, torch.Tensor]:
    """Stage-2 (structured latent) condition inputs, as upstream's slat_preprocessor produces
    them: image, mask, rgb_image, rgb_image_mask, with the shapes and values of
    ``prepare_ss_inputs``."""
    rgb, mask = _image_and_mask(rgba)
    return _image_inputs(rgb, mask, size, crop_box(mask[0]))


def embedder_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of a prepare_* dict that the condition embedders take (no pose moments)."""
    return {k: inputs[k] for k in EMBEDDER_KEYS if k in inputs}
