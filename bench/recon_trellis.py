"""TRELLIS on a GPU at full size (random weights): time per stage and peak GPU memory.

Writes TRELLIS-image-large (and TRELLIS-text-xlarge) in the published layout with random weights
(bench/full_size.write_trellis), loads the family as recon does, and runs image -> GLB,
image -> Gaussian PLY and text -> GLB, recording each stage's time and
torch.cuda.max_memory_allocated per request.

Random weights decide nothing useful about shape: the sparse-structure decoder would mark about
half of the 64^3 grid and the mesh decoder would put a surface in every voxel. So, for sizes
like a real object's, two stand-ins wrap the real networks (which still run and are timed):
the occupancy is replaced by a sphere shell of about `--voxels` voxels, and the mesh decoder's
SDF channels by that sphere's signed distance. Everything after them is the real code path.

    . bench/gpu_env.sh && python3 bench/recon_trellis.py --out "$OUT/trellis.json"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.recon_family import load, new_report, run_cases


class ShellOccupancy(torch.nn.Module):
    """Runs the real decoder, then answers with a sphere shell's occupancy."""

    def __init__(self, decoder: torch.nn.Module, voxels: int):
        super().__init__()
        self.decoder, self.voxels = decoder, voxels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(z)
        res = logits.shape[-1]
        axis = torch.arange(res, device=z.device, dtype=torch.float32) - (res - 1) / 2
        x, y, zz = torch.meshgrid(axis, axis, axis, indexing="ij")
        radius = torch.sqrt(x * x + y * y + zz * zz)
        # thickness so that the shell holds about `voxels` cells at radius 0.4 * res
        r = 0.4 * res
        thickness = self.voxels / (4 * torch.pi * r * r)
        shell = (radius - r).abs() <= thickness / 2
        return torch.where(shell, 1.0, -1.0).to(logits.dtype).expand_as(logits)


class SphereSDF(torch.nn.Module):
    """Runs the real mesh decoder, then puts a sphere's signed distance into its SDF channels."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder
        self.resolution, self.use_color = decoder.resolution, decoder.use_color

    def forward(self, x):
        out = self.decoder(x)
        res = self.resolution * 4
        corners = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], device=out.device)
        points = (out.coords[:, 1:].unsqueeze(1) + corners) / res - 0.5  # (N, 8, 3) in [-0.5, 0.5]
        feats = out.feats.clone()
        feats[:, :8] = points.norm(dim=-1) - 0.4
        return out.replace(feats)


def prompt_image() -> Image.Image:
    image = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((100, 100, 412, 412), fill=(160, 110, 70, 255))
    return image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/trellis-full")
    parser.add_argument("--out", default="trellis.json")
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--text", default="xlarge", help="text model size; empty to skip")
    args = parser.parse_args()

    from bench.full_size import write_trellis
    from services.recon.families.base import ReconInput
    from services.recon.families.trellis.family import TrellisFamily
    from services.recon.settings import ReconSettings
    from threegen.common.v1 import common_pb2
    from threegen.errors import Violations
    from threegen.recon.v1 import recon_pb2

    report = new_report()
    started = time.perf_counter()
    folders = write_trellis(Path(args.root), text_size=args.text)
    report["write_seconds"] = round(time.perf_counter() - started, 1)
    settings = ReconSettings.from_env(
        {},
        families=("trellis",),
        default_family="trellis",
        trellis_model=str(folders["image"]),
        trellis_text_model=str(folders.get("text", "")),
        trellis_dinov2=str(folders["dinov2"]),
    )
    family = TrellisFamily(settings, "cuda")
    load(family, report)
    for engine in family.engines.values():
        models = engine.models
        if not isinstance(models["sparse_structure_decoder"], ShellOccupancy):
            models["sparse_structure_decoder"] = ShellOccupancy(
                models["sparse_structure_decoder"], args.voxels
            )
            models["slat_decoder_mesh"] = SphereSDF(models["slat_decoder_mesh"])

    def job(image, prompt, output, **options):
        params = family.parse_options(recon_pb2.TrellisOptions(**options), Violations())
        return ReconInput(image, None, prompt, 1, output, False, params)

    mesh, splats = common_pb2.GEOMETRY_KIND_MESH, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT
    cases = {
        "image_to_glb": job(prompt_image(), "", mesh),
        "image_to_gaussians": job(prompt_image(), "", splats),
        "image_to_glb_steps_12": job(prompt_image(), "", mesh, sparse_structure_steps=12, slat_steps=12),
    }
    if "text" in family.engines:
        cases["text_to_glb"] = job(None, "a wooden chair", mesh)
    run_cases(family, cases, cases["image_to_glb"], report, args.out)


if __name__ == "__main__":
    main()
