"""SAM 3D Objects on a GPU at full size (random weights): time per stage and peak GPU memory.

Writes facebook/sam-3d-objects' layout with random weights (bench/full_size.write_sam3d: 3.2 B
parameters in fp16, plus a full-size MoGe ViT-L), loads the family as recon does, and runs
image + mask -> textured GLB, -> vertex-colour GLB, -> Gaussian PLY, recording each stage's
time and torch.cuda.max_memory_allocated per request.

Random weights decide nothing useful about shape, so three stand-ins wrap real networks (which
still run and are timed): MoGe's point map is replaced by a plane 2 m in front of the camera,
the occupancy by a sphere shell of about `--voxels` voxels, and the mesh decoder's SDF by that
sphere's signed distance (bench/recon_trellis.py). Everything after them is the real code path.

    . bench/gpu_env.sh && python3 bench/recon_sam3d.py --out "$OUT/sam3d.json"
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
from bench.recon_trellis import ShellOccupancy, SphereSDF


class PlaneDepth(torch.nn.Module):
    """Runs the real MoGe, then answers with a fronto-parallel plane's points (OpenCV camera)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def infer(self, image: torch.Tensor, **options) -> dict:
        out = self.model.infer(image, **options)
        height, width = image.shape[-2:]
        v, u = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        points = torch.stack([u, v * height / width, torch.ones_like(u)], dim=-1) * 2.0
        return {**out, "points": points.to(image.device)}


def photo() -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (640, 480), (90, 120, 160))
    ImageDraw.Draw(image).ellipse((200, 120, 440, 360), fill=(160, 110, 70))
    mask = Image.new("L", (640, 480), 0)
    ImageDraw.Draw(mask).ellipse((200, 120, 440, 360), fill=255)
    return image, mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/sam3d-full")
    parser.add_argument("--out", default="sam3d.json")
    parser.add_argument("--voxels", type=int, default=20000)
    args = parser.parse_args()

    from bench.full_size import write_sam3d
    from services.recon.families.base import ReconInput
    from services.recon.families.sam3d.family import Sam3dFamily
    from services.recon.settings import ReconSettings
    from threegen.common.v1 import common_pb2
    from threegen.errors import Violations
    from threegen.recon.v1 import recon_pb2

    report = new_report()
    started = time.perf_counter()
    write_sam3d(Path(args.root))
    report["write_seconds"] = round(time.perf_counter() - started, 1)
    settings = ReconSettings.from_env({}, families=("sam3d",), default_family="sam3d", sam3d_model=args.root)
    family = Sam3dFamily(settings, "cuda")
    load(family, report)
    engine = family.engine
    engine.depth = PlaneDepth(engine.depth)
    engine.ss_decoder = ShellOccupancy(engine.ss_decoder, args.voxels)
    engine.mesh_decoder = SphereSDF(engine.mesh_decoder)

    image, mask = photo()

    def job(output, **options):
        params = family.parse_options(recon_pb2.Sam3dOptions(**options), Violations())
        return ReconInput(image, mask, "", 1, output, False, params)

    mesh, splats = common_pb2.GEOMETRY_KIND_MESH, common_pb2.GEOMETRY_KIND_GAUSSIAN_SPLAT
    cases = {
        "image_to_textured_glb": job(mesh),
        "image_to_vertex_colour_glb": job(mesh, with_texture=False),
        "image_to_gaussians": job(splats),
        "image_to_glb_steps_12": job(mesh, sparse_structure_steps=12, slat_steps=12),
    }
    run_cases(family, cases, cases["image_to_gaussians"], report, args.out)


if __name__ == "__main__":
    main()
