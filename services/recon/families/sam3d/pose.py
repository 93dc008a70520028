"""SAM 3D Objects stage-1 post-processing: pose decoding and sparse-structure thinning.

``decode_pose`` follows upstream's ``ScaleShiftInvariant`` pose decoder (pipeline.yaml
``pose_decoder_name``): the 6D rotation latent is de-normalised with fixed statistics and
Gram-Schmidt-orthonormalised into a rotation matrix (columns b1, b2, b3), turned into a wxyz
quaternion with w >= 0 (PyTorch3D's convention); scale is exp of its latent; translation is used as
is (this convention ignores ``translation_scale``). The object pose, in the normalised point-map
frame, is then mapped through the point map's scale and shift into camera space; upstream does that
with PyTorch3D 4x4 transforms (compose, then decompose by row norms), reproduced here with the same
arithmetic on 3x3 blocks. Upstream's row-vector convention applies the result as
``p_camera = (p_object * scale) @ quaternion_to_matrix(rotation) + translation``.

``prune_surface`` and ``downsample_if_large`` match upstream's ``prune_sparse_structure`` (distance
1) and ``downsample_sparse_structure`` output for output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Statistics of the 6D rotation targets the stage-1 model was trained on (upstream values).
ROTATION_6D_MEAN = (
    -0.06366084883674913, 0.008438224692279752, 0.00017084786438302483,
    0.0007126610473540038, -0.0030916726538816417, 0.5166093753457688,
)  # fmt: skip
ROTATION_6D_STD = (
    0.6656971967514863, 0.6787012271867754, 0.30345010594844524,
    0.4394504420678794, 0.39817973931717104, 0.6176286868761914,
)  # fmt: skip
MAX_COORDS = 42000  # upstream's limit: above it int32 indexing in the mesh decoder overflows


# -- rotations -------------------------------------------------------------------------------------


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3): first three numbers give the first column, the next three the
    second after removing its component along the first; the third column is their cross product."""
    a1, a2 = d6[..., :3], d6[..., 3:6]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(dim=-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz quaternion (any norm) -> (..., 3, 3) rotation matrix acting on column vectors."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrix -> (..., 4) wxyz quaternion with w >= 0.

    Shepperd's method: of the four ways to recover the quaternion, use the one whose pivot
    component is largest in magnitude (best conditioned).
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    squares = torch.stack(
        [1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], -1
    )
    pivots = torch.sqrt(squares.clamp_min(0.0))
    # Row i: the quaternion times 2 * pivots[i], assembled from the pivot's own square.
    by_pivot = torch.stack(
        [
            torch.stack([pivots[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, pivots[..., 1] ** 2, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, pivots[..., 2] ** 2, m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, pivots[..., 3] ** 2], -1),
        ],
        -2,
    )
    candidates = by_pivot / (2.0 * pivots.clamp_min(0.1))[..., None]
    best = pivots.argmax(dim=-1)[..., None, None].expand(*pivots.shape[:-1], 1, 4)
    q = torch.gather(candidates, -2, best).squeeze(-2)
    return torch.where(q[..., :1] < 0, -q, q)


# -- pose ------------------------------------------------------------------------------------------


def decode_pose(
    latents: dict[str, torch.Tensor],
    scene_scale: torch.Tensor | None,
    scene_shift: torch.Tensor | None,
    downsample_factor: float = 1,
) -> dict[str, torch.Tensor]:
    """Stage-1 pose latents -> camera-space pose, as upstream's ScaleShiftInvariant decoder.

    ``latents``: ``6drotation_normalized`` (B, 1, 6), ``scale`` (B, 1, 3), ``translation``
    (B, 1, 3) (the token axis may be absent); ``scene_scale`` / ``scene_shift``: the point map's
    (B, 3) or (3,) moments from ``prepare_ss_inputs`` (None: 1 and 0, as upstream).
    Returns float32 ``rotation`` (B, 4) wxyz, ``translation`` (B, 3) and ``scale`` (B, 3), the
    scale isotropic (mean of the three axes) and multiplied by ``downsample_factor`` (upstream
    does that multiplication in the pipeline).
    """
    rot6d = latents["6drotation_normalized"].float()
    batch = rot6d.shape[0]
    rot6d = rot6d.reshape(batch, 6)
    rot6d = rot6d * rot6d.new_tensor(ROTATION_6D_STD) + rot6d.new_tensor(ROTATION_6D_MEAN)
    scale = torch.exp(latents["scale"].float().reshape(batch, 3))
    translation = latents["translation"].float().reshape(batch, 3)
    scene_scale = torch.ones(3) if scene_scale is None else scene_scale.float().cpu()
    scene_shift = torch.zeros(3) if scene_shift is None else scene_shift.float().cpu()
    scene_scale = scene_scale.to(rot6d.device).reshape(-1, 3).expand(batch, 3)
    scene_shift = scene_shift.to(rot6d.device).reshape(-1, 3).expand(batch, 3)

    # Object pose in the normalised frame: rows of diag(scale) @ R, then the scene's scale on columns.
    rotation = quaternion_to_matrix(matrix_to_quaternion(rotation_6d_to_matrix(rot6d)))
    linear = (scale[:, :, None] * rotation) * scene_scale[:, None, :]
    placed = translation * scene_scale + scene_shift
    row_norms = torch.linalg.vector_norm(linear, dim=-1)
    quaternion = matrix_to_quaternion(linear / row_norms[:, :, None])
    isotropic = row_norms.mean(dim=-1, keepdim=True).expand(batch, 3)
    return {"rotation": quaternion, "translation": placed, "scale": isotropic * downsample_factor}


# -- sparse structure ------------------------------------------------------------------------------


def prune_surface(coords: torch.Tensor) -> torch.Tensor:
    """Keep the (N, 4) [batch, x, y, z] voxels that have an empty voxel among their 26
    neighbours; voxels on the faces of the occupied bounding box always count as surface.
    Order and dtype are kept. The batch column is ignored when testing neighbours, as upstream."""
    if coords.shape[0] == 0:
        raise ValueError("the sparse-structure stage found no occupied voxel for this object")
    xyz = coords[:, 1:].long()
    xyz = xyz - xyz.min(dim=0).values
    dims = (xyz.max(dim=0).values + 1).tolist()
    empty = torch.ones(dims, dtype=torch.float32, device=coords.device)
    empty[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = 0.0
    # Treat outside the bounding box as empty, then look for any empty voxel in each 3x3x3 block.
    padded = F.pad(empty[None, None], (1, 1, 1, 1, 1, 1), value=1.0)
    near_empty = F.max_pool3d(padded, kernel_size=3, stride=1)[0, 0]
    keep = near_empty[xyz[:, 0], xyz[:, 1], xyz[:, 2]] > 0
    return coords[keep]


def downsample_if_large(
    coords: torch.Tensor, limit: int = MAX_COORDS, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, int]:
    """Return (coords, 1) when there are at most ``limit`` voxels; otherwise shrink the occupied
    box to half its size about its centre, round, drop duplicates (sorted, int32) and report
    factor 2. If still above the limit, keep a random ``limit`` of them (upstream draws from the
    global RNG; pass ``generator`` to control it)."""
    if coords.shape[0] <= limit:
        return coords, 1
    factor = 2
    xyz = coords[:, 1:].float()
    low, high = xyz.min(dim=0).values, xyz.max(dim=0).values
    extent = high - low + 1
    target = extent / factor
    target_low = low + (extent - target) / 2
    target_high = target_low + target - 1
    span = high - low
    unit = (xyz - low) / torch.where(span > 0, span, torch.ones_like(span))
    shrunk = torch.round(unit * (target - 1) + target_low).int()
    shrunk = torch.clamp(shrunk, target_low.int(), target_high.int())
    merged = torch.unique(torch.cat([coords[:, :1].int(), shrunk], dim=1), dim=0)
    if merged.shape[0] > limit:
        pick = torch.randperm(merged.shape[0], generator=generator, device=merged.device)[:limit]
        merged = merged[pick]
    return merged.int(), factor
