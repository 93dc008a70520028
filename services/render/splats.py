"""Gaussian splats and point clouds drawn with torch (GPU when present, CPU otherwise).

Each 3D Gaussian (a splat's scale and rotation; for a point cloud, a small round sprite sized
from the point spacing) is projected to a 2D ellipse (EWA: the Jacobian of the perspective
projection applied to its covariance), evaluated over the pixels it covers, and blended with
weighted order-independent transparency (McGuire and Bavoil, 2013): near, opaque splats
dominate each pixel, coverage multiplies as transmittance. No per-pixel sorting is needed,
so every step is a vectorised scatter-add. Point clouds with normals are lit from the camera.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from services.render.geometry import Points

YFOV = math.radians(40.0)
RADIUS_BUCKETS = (1, 2, 3, 5, 8, 12, 16, 24)  # footprint half-widths in pixels, processed per bucket
MAX_ELEMENTS = 1 << 24  # contributions evaluated at once


def _quaternion_matrices(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(-1, 3, 3)


def point_spacing(positions: np.ndarray, sample: int = 4096) -> float:
    """Median distance from a point to its nearest neighbour (on a sample)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    chosen = positions[rng.choice(len(positions), min(sample, len(positions)), replace=False)]
    distances, _ = cKDTree(positions).query(chosen, k=2)
    spacing = float(np.median(distances[:, 1]))
    return spacing if spacing > 0 else 1e-3


class SplatStage:
    """Holds the splats on the device, framed like the mesh stage (same camera and turn)."""

    def __init__(
        self,
        points: Points,
        background: tuple[float, float, float],
        elevation_deg: float,
        device: str | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        positions = points.positions.astype(np.float32)
        lo, hi = positions.min(axis=0), positions.max(axis=0)
        self.center = torch.tensor((lo + hi) / 2.0, device=self.device)
        radius = float(np.percentile(np.linalg.norm(positions - (lo + hi) / 2.0, axis=1), 99.5)) or 1.0
        self.distance = radius / math.sin(YFOV / 2.0) * 1.05
        elevation = math.radians(elevation_deg)
        eye = np.array([0.0, self.distance * math.sin(elevation), self.distance * math.cos(elevation)])
        forward = -eye / np.linalg.norm(eye)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        # World -> camera (x right, y up, z towards the viewer); camera at `eye` looking at the origin.
        self.view = torch.tensor(np.stack([right, up, -forward]), dtype=torch.float32, device=self.device)
        self.eye = torch.tensor(eye, dtype=torch.float32, device=self.device)
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self.means = torch.from_numpy(positions).to(self.device) - self.center
        self.colors = torch.from_numpy(points.colors.astype(np.float32)).to(self.device)
        count = len(positions)
        if points.scales is not None:
            scales = torch.from_numpy(points.scales).to(self.device)
            rotation = _quaternion_matrices(torch.from_numpy(points.rotations).to(self.device))
            self.covariance = rotation @ torch.diag_embed(scales**2) @ rotation.transpose(1, 2)
            self.opacity = torch.from_numpy(points.opacities.astype(np.float32)).to(self.device)
        else:
            sigma = 0.9 * point_spacing(positions)
            self.covariance = torch.eye(3, device=self.device).expand(count, 3, 3) * sigma**2
            self.opacity = torch.full((count,), 0.95, device=self.device)
        self.normals = None
        if points.normals is not None:
            normals = torch.from_numpy(points.normals.astype(np.float32)).to(self.device)
            self.normals = torch.nn.functional.normalize(normals, dim=-1)
        self.angle = 0.0

    def turn(self, angle: float) -> None:
        self.angle = angle

    @torch.inference_mode()
    def draw(self, size: int) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        turn = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], device=self.device)
        world_to_camera = self.view @ turn
        camera = (self.means @ world_to_camera.T) - (self.eye @ self.view.T)
        depth = -camera[:, 2]
        keep = depth > self.distance * 0.01
        focal = (size / 2.0) / math.tan(YFOV / 2.0)
        colors = self.colors
        if self.normals is not None:  # lit from the camera: the side facing it is brightest
            facing = (self.normals @ world_to_camera.T)[:, 2].abs()
            colors = colors * (0.35 + 0.65 * facing[:, None])
        cam, z, cov3, rgb, opacity = (
            camera[keep],
            depth[keep],
            self.covariance[keep],
            colors[keep],
            self.opacity[keep],
        )
        cx = focal * cam[:, 0] / z + size / 2.0
        cy = -focal * cam[:, 1] / z + size / 2.0
        zeros = torch.zeros_like(z)
        jacobian = torch.stack(
            [
                torch.stack([focal / z, zeros, focal * cam[:, 0] / z**2], dim=-1),
                torch.stack([zeros, -focal / z, -focal * cam[:, 1] / z**2], dim=-1),
            ],
            dim=1,
        )  # d(pixel)/d(camera), with the camera looking down -z
        jacobian = jacobian @ world_to_camera
        cov2 = jacobian @ cov3 @ jacobian.transpose(1, 2) + 0.3 * torch.eye(2, device=self.device)
        a, b, d = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
        det = (a * d - b * b).clamp_min(1e-12)
        inv_a, inv_b, inv_d = d / det, -b / det, a / det
        largest = 0.5 * (a + d) + torch.sqrt((0.25 * (a - d) ** 2 + b * b).clamp_min(0.0))
        radius = torch.ceil(3.0 * torch.sqrt(largest))
        near, far = float(z.min()) if len(z) else 0.0, float(z.max()) if len(z) else 1.0
        depth01 = (z - near) / max(far - near, 1e-6)
        weight = torch.exp(-12.0 * depth01) + 1e-4  # nearer splats dominate their pixels

        pixels = size * size
        accum = torch.zeros((pixels, 3), device=self.device)
        accum_w = torch.zeros(pixels, device=self.device)
        log_t = torch.zeros(pixels, device=self.device)
        lower = 0
        for bucket in RADIUS_BUCKETS:
            chosen = (
                ((radius > lower) & (radius <= bucket)) if bucket != RADIUS_BUCKETS[-1] else (radius > lower)
            )
            lower = bucket
            index = chosen.nonzero().squeeze(1)
            if len(index) == 0:
                continue
            axis = torch.arange(-bucket, bucket + 1, device=self.device, dtype=torch.float32)
            oy, ox = torch.meshgrid(axis, axis, indexing="ij")
            offsets = torch.stack([ox.reshape(-1), oy.reshape(-1)], dim=1)  # (K,2)
            per_chunk = max(1, MAX_ELEMENTS // len(offsets))
            for start in range(0, len(index), per_chunk):
                part = index[start : start + per_chunk]
                base = torch.stack([cx[part].floor(), cy[part].floor()], dim=1)
                px = base[:, None, :] + offsets[None]  # (M,K,2)
                dx = px[..., 0] + 0.5 - cx[part, None]
                dy = px[..., 1] + 0.5 - cy[part, None]
                power = -0.5 * (
                    inv_a[part, None] * dx * dx
                    + 2 * inv_b[part, None] * dx * dy
                    + inv_d[part, None] * dy * dy
                )
                alpha = (opacity[part, None] * torch.exp(power)).clamp_max(0.99)
                inside = (px[..., 0] >= 0) & (px[..., 0] < size) & (px[..., 1] >= 0) & (px[..., 1] < size)
                valid = inside & (alpha > 1.0 / 255.0)
                flat = (px[..., 1] * size + px[..., 0]).long()[valid]
                alpha_v = alpha[valid]
                splat = part[:, None].expand_as(alpha)[valid]
                contribution = alpha_v * weight[splat]
                accum.index_add_(0, flat, contribution[:, None] * rgb[splat])
                accum_w.index_add_(0, flat, contribution)
                log_t.index_add_(0, flat, torch.log1p(-alpha_v))
        color = accum / accum_w.clamp_min(1e-8)[:, None]
        coverage = (1.0 - torch.exp(log_t))[:, None]
        image = color * coverage + self.background * (1.0 - coverage)
        image = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).view(size, size, 3)
        return image.cpu().numpy()
