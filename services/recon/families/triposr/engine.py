"""TripoSR inference: image -> triplanes -> density grid -> marching cubes -> coloured mesh."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from services.recon.families.triposr.loader import LoadedTripoSR
from services.recon.families.triposr.preprocess import prepare
from services.recon.isosurface import marching_cubes
from threegen.runtime.work import Reporter
from threegen.stopwatch import Laps

# TripoSR's frame is +z up; glTF (and every viewer) is +y up. This maps (x, y, z) to
# (-y, z, -x), the orientation the reference demo displays its meshes in.
Z_UP_TO_Y_UP = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]], dtype=np.float32)


@dataclass
class TripoSRParams:
    mc_resolution: int = 256
    foreground_ratio: float = 0.85
    density_threshold: float = 25.0


@dataclass
class MeshOutput:
    vertices: np.ndarray  # (V,3) float32, y-up
    faces: np.ndarray  # (F,3) int64
    colors: np.ndarray  # (V,3) uint8
    timings: list[tuple[str, float]] = field(default_factory=list)
    closed: bool = False  # the surface does not reach the grid's border, so it is watertight


class TripoSREngine:
    def __init__(self, loaded: LoadedTripoSR, chunk_points: int = 0):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        # 0: about 2M points per query batch on a GPU (few launches), 256k on a CPU (cache-sized).
        self.chunk_points = chunk_points or (1 << 21 if self.device.type == "cuda" else 1 << 18)
        self._grid_cache: dict[int, torch.Tensor] = {}

    def _grid(self, resolution: int) -> torch.Tensor:
        grid = self._grid_cache.get(resolution)
        if grid is None:
            radius = self.model.config.renderer.radius
            axis = torch.linspace(-radius, radius, resolution, device=self.device)
            grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
            self._grid_cache = {resolution: grid}  # keep one: a 512^3 grid is 1.6 GB
        return grid

    @torch.inference_mode()
    def density_grid(self, triplane: torch.Tensor, resolution: int, reporter: Reporter) -> torch.Tensor:
        points = self._grid(resolution)
        out = torch.empty(points.shape[0], device=self.device, dtype=torch.float32)
        total = points.shape[0]
        chunks = range(0, total, self.chunk_points)
        for index, start in enumerate(chunks):
            end = min(start + self.chunk_points, total)
            out[start:end] = self.model.density(self.model.query_raw(triplane, points[start:end]))
            reporter.progress("query", (index + 1) / len(chunks), f"density chunk {index + 1}/{len(chunks)}")
        return out.view(resolution, resolution, resolution)

    @torch.inference_mode()
    def reconstruct(self, image: Image.Image, params: TripoSRParams, reporter: Reporter) -> MeshOutput:
        lap = Laps(self.device)

        size = self.model.config.cond_image_size
        pixels = prepare(image, size, params.foreground_ratio, self.device).to(self.dtype)
        reporter.span(0.0, 0.05).progress("preprocess", 1.0)
        lap("preprocess")

        context = self.model.image_tokenizer(pixels)
        reporter.span(0.05, 0.1).progress("tokenize", 1.0, f"{context.shape[1]} image tokens")
        backbone = reporter.span(0.1, 0.35)
        codes = self.model.scene_codes(
            pixels,
            on_block=lambda i, n: backbone.progress("backbone", i / n, f"block {i}/{n}"),
            context=context,
        )
        lap("triplanes")

        triplane = codes[0]
        radius = self.model.config.renderer.radius
        density = self.density_grid(triplane, params.mc_resolution, reporter.span(0.35, 0.8))
        lap("query")

        vertices, faces = marching_cubes(density, params.density_threshold)
        level = params.density_threshold
        border = [density[0], density[-1], density[:, 0], density[:, -1], density[:, :, 0], density[:, :, -1]]
        closed = not any(bool((side > level).any()) for side in border)
        reporter.span(0.8, 0.9).progress("marching_cubes", 1.0, f"{len(faces)} faces")
        lap("marching_cubes")

        world = vertices / (params.mc_resolution - 1) * (2 * radius) - radius
        colours = []
        world_t = torch.from_numpy(world).to(self.device)
        colour_span = reporter.span(0.9, 1.0)
        steps = range(0, len(world_t), self.chunk_points)
        for index, start in enumerate(steps):
            chunk = world_t[start : start + self.chunk_points]
            colours.append(self.model.color(self.model.query_raw(triplane, chunk)))
            colour_span.progress("colors", (index + 1) / len(steps))
        rgb = (torch.cat(colours).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        lap("colors")

        return MeshOutput(world @ Z_UP_TO_Y_UP.T, faces, rgb, lap.timings, closed)
