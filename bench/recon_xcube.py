"""XCube on a GPU at full size (random weights): time per stage and peak GPU memory.

Writes XCube's objaverse layout with random weights (bench/full_size.write_xcube: the coarse
diffusion UNet's 1.49 B parameters and its EMA copy, both VAEs, the fine UNet, a full-size
SD-2.1-shaped text tower), loads the family as recon does, and runs text -> points with and
without the fine stage, recording each stage's time and torch.cuda.max_memory_allocated.

Random weights decide nothing useful about shape: each VAE's structure heads would keep about
half of every level, and the fine grid would explode. So each structure head is wrapped (the
real convolution still runs and is timed) to keep only voxels near a sphere of radius 0.35,
which gives about as many voxels as a real object's surface. Everything else is the real path.

    . bench/gpu_env.sh && python3 bench/recon_xcube.py --out "$OUT/xcube.json"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.recon_family import load, new_report, run_cases


class ShellStructure(torch.nn.Module):
    """Runs a structure head, then answers "exists" only within a voxel or so of a sphere."""

    def __init__(self, head: torch.nn.Module, voxel_size: float, radius: float = 0.35):
        super().__init__()
        self.head, self.voxel_size, self.radius = head, voxel_size, radius

    def forward(self, x):
        out = self.head(x)
        centres = (x.coords[:, 1:].float() + 0.5) * self.voxel_size
        near = (centres.norm(dim=1) - self.radius).abs() <= 0.9 * self.voxel_size
        logits = torch.stack([near.float(), (~near).float()], dim=1).to(out.feats.dtype)
        return out.replace(logits)


def shell(vae) -> None:
    heads = vae.unet.struct_convs
    for level, name in enumerate(list(heads._modules)):
        heads._modules[name] = ShellStructure(heads._modules[name], vae.voxel_size(level))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/xcube-full")
    parser.add_argument("--out", default="xcube.json")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    from bench.full_size import write_xcube
    from services.recon.families.base import ReconInput
    from services.recon.families.xcube.family import XCubeFamily
    from services.recon.settings import ReconSettings
    from threegen.common.v1 import common_pb2
    from threegen.errors import Violations
    from threegen.recon.v1 import recon_pb2

    report = new_report()
    started = time.perf_counter()
    root = write_xcube(Path(args.root))
    report["write_seconds"] = round(time.perf_counter() - started, 1)
    settings = ReconSettings.from_env(
        {}, families=("xcube",), default_family="xcube", xcube_model=str(root),
        xcube_text_encoder=str(root / "text"), xcube_tokenizer=str(root / "tokenizer"),
    )  # fmt: skip
    family = XCubeFamily(settings, "cuda")
    load(family, report)
    engine = family.engine
    shell(engine.coarse_vae)
    if engine.fine is not None:
        shell(engine.fine[1])

    def job(**options):
        request = family.parse_options(recon_pb2.XCubeOptions(**options), Violations())
        cloud = common_pb2.GEOMETRY_KIND_POINT_CLOUD
        return ReconInput(None, None, "a wooden chair", 1, cloud, False, request)

    cases = {
        f"text_to_points_fine_{args.steps}_steps": job(ddim_steps=args.steps),
        f"text_to_points_coarse_only_{args.steps}_steps": job(ddim_steps=args.steps, use_fine=False),
        "text_to_points_fine_50_steps": job(ddim_steps=50),
    }
    run_cases(family, cases, job(ddim_steps=5), report, args.out)


if __name__ == "__main__":
    main()
