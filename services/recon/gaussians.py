"""3D Gaussian splats from TRELLIS-family decoders, written as the standard 3DGS PLY.

The decoders output raw parameters; the activations are TRELLIS's: positions inside the
[-0.5, 0.5]^3 box, softplus (or exp) scales with a bias and a minimum kernel size, sigmoid
opacity with a bias, quaternions (w first) with a (1, 0, 0, 0) bias. The PLY has one `vertex`
element of 17 float properties (x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3), opacity
as a logit, scales as logs, positions and rotations turned from TRELLIS's z-up frame by the same
fixed matrix upstream's `save_ply` uses, so viewers that read TRELLIS's PLYs read these.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from threegen.chunks import Artifact

PLY_TRANSFORM = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)
PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip


@dataclass
class Splats:
    xyz: np.ndarray  # (N, 3) TRELLIS frame
    features_dc: np.ndarray  # (N, 3) raw SH DC coefficients
    opacity_logit: np.ndarray  # (N,)
    log_scale: np.ndarray  # (N, 3)
    rotation: np.ndarray  # (N, 4) w, x, y, z (not necessarily unit)

    def __len__(self) -> int:
        return len(self.xyz)


def activate(raw: dict[str, torch.Tensor], config: dict) -> Splats:
    """TRELLIS's Gaussian activations applied to one sample's raw decoder outputs."""
    scaling_bias = float(config["scaling_bias"])
    if config.get("scaling_activation", "exp") == "softplus":
        bias = scaling_bias + math.log(-math.expm1(-scaling_bias))  # inverse softplus
        scales = torch.nn.functional.softplus(raw["_scaling"].float() + bias)
    else:
        scales = torch.exp(raw["_scaling"].float() + math.log(scaling_bias))
    minimum = float(config.get("3d_filter_kernel_size", 0.0))
    scales = torch.sqrt(scales.square() + minimum**2)
    opacity_bias = float(config["opacity_bias"])
    logit = raw["_opacity"].float().squeeze(-1) + math.log(opacity_bias / (1 - opacity_bias))
    rotation = raw["_rotation"].float() + torch.tensor([1.0, 0.0, 0.0, 0.0], device=scales.device)
    xyz = raw["_xyz"].float() - 0.5  # aabb origin -0.5, size 1
    return Splats(
        xyz.cpu().numpy(),
        raw["_features_dc"].float().reshape(-1, 3).cpu().numpy(),
        logit.cpu().numpy(),
        torch.log(scales).cpu().numpy(),
        rotation.cpu().numpy(),
    )


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) -> unit quaternions (N, 4), w first and w >= 0."""
    r = {(i, j): m[:, i, j] for i in range(3) for j in range(3)}
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    candidates = np.stack(
        [
            np.stack([1 + trace, r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]], -1),
            np.stack([r[2, 1] - r[1, 2], 1 + 2 * r[0, 0] - trace, r[0, 1] + r[1, 0], r[0, 2] + r[2, 0]], -1),
            np.stack([r[0, 2] - r[2, 0], r[0, 1] + r[1, 0], 1 + 2 * r[1, 1] - trace, r[1, 2] + r[2, 1]], -1),
            np.stack([r[1, 0] - r[0, 1], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1], 1 + 2 * r[2, 2] - trace], -1),
        ],
        axis=1,
    )
    diagonal = np.stack([trace, r[0, 0], r[1, 1], r[2, 2]], -1)
    best = candidates[np.arange(len(m)), np.argmax(diagonal, axis=1)]
    best /= np.linalg.norm(best, axis=1, keepdims=True)
    return best * np.where(best[:, :1] < 0, -1.0, 1.0)


def to_ply(splats: Splats) -> bytes:
    xyz = splats.xyz.astype(np.float64) @ PLY_TRANSFORM.T
    rotation = matrix_to_quaternion(
        PLY_TRANSFORM[None] @ quaternion_to_matrix(splats.rotation.astype(np.float64))
    )
    rows = np.zeros(len(splats), dtype=[(name, "<f4") for name in PROPERTIES])
    rows["x"], rows["y"], rows["z"] = xyz.T
    for i in range(3):
        rows[f"f_dc_{i}"] = splats.features_dc[:, i]
        rows[f"scale_{i}"] = splats.log_scale[:, i]
    rows["opacity"] = splats.opacity_logit
    for i in range(4):
        rows[f"rot_{i}"] = rotation[:, i]
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(splats)}\n"
    header += "".join(f"property float {name}\n" for name in PROPERTIES) + "end_header\n"
    return header.encode("ascii") + rows.tobytes()


def ply_artifact(splats: Splats, timings: list[tuple[str, float]]) -> Artifact:
    """`gaussians.ply`, its writing time appended to `timings`."""
    started = time.perf_counter()
    artifact = Artifact("gaussians.ply", to_ply(splats))
    timings.append(("write_ply", time.perf_counter() - started))
    return artifact
