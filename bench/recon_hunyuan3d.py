"""Hunyuan3D-2 on a GPU at full size (random weights): peak memory and time per memory profile.

Writes tencent/Hunyuan3D-2's layout with random weights (bench/full_size.write_hunyuan3d),
loads the family exactly as recon does, then for each memory profile 1..5 makes it the resting
placement, warms up, and runs one shape-only and one textured request, recording
torch.cuda.max_memory_allocated next to the family's own estimate. Last, it fills the GPU so
that only a little more than profile 5's estimate stays free and checks that profile 1 is
refused with RESOURCE_EXHAUSTED before any work while profile 5 is served.

    . bench/gpu_env.sh && python3 bench/recon_hunyuan3d.py --out "$OUT/hunyuan3d.json"

The lent GPU image lacks pymeshlab (a 106 MB wheel, over the carry limit); hy3dgen imports it
at package import only, and threegen's code path never calls it, so an empty stand-in is
registered when it is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GIB = 1 << 30


def pymeshlab_stand_in() -> None:
    try:
        import pymeshlab  # noqa: F401
    except ImportError:
        module = types.ModuleType("pymeshlab")
        module.MeshSet = type("MeshSet", (), {})
        sys.modules["pymeshlab"] = module


def prompt_image() -> Image.Image:
    image = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 80, 392, 352), fill=(180, 120, 60, 255))
    draw.rectangle((200, 300, 312, 470), fill=(90, 60, 30, 255))
    return image


def request(family, profile: int, texture: bool, octree: int, seed: int):
    from services.recon.families.base import ReconInput
    from threegen.common.v1 import common_pb2
    from threegen.errors import Violations
    from threegen.recon.v1 import recon_pb2

    options = recon_pb2.Hunyuan3DOptions(texture=texture, memory_profile=profile, octree_resolution=octree)
    params = family.parse_options(options, Violations())
    return ReconInput(prompt_image(), None, "", seed, common_pb2.GEOMETRY_KIND_MESH, False, params)


def measure(family, profile: int, texture: bool, octree: int) -> dict:
    from services.recon.families.hunyuan3d import profiles
    from threegen.runtime.work import Reporter

    job = request(family, profile, texture, octree, seed=1)
    guess = profiles.estimate(profile, family.components(), octree, texture)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    output = family.run(job, Reporter())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "profile": profile,
        "texture": texture,
        "octree_resolution": octree,
        "seconds": round(seconds, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "allocated_before_gib": round(before / GIB, 3),
        "estimate_gib": round(guess.peak_bytes / GIB, 3),
        "faces": output.stats.face_count,
        "timings": {step: round(s, 3) for step, s in output.timings},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/hunyuan3d-full")
    parser.add_argument("--out", default="hunyuan3d.json")
    parser.add_argument("--octree", type=int, default=256)
    parser.add_argument("--profiles", default="1,2,3,4,5")
    parser.add_argument("--shape-only", action="store_true", help="skip the textured runs (each ~2 min)")
    args = parser.parse_args()
    pymeshlab_stand_in()

    from bench.full_size import write_hunyuan3d
    from services.recon.families.hunyuan3d import profiles
    from services.recon.families.hunyuan3d.family import Hunyuan3DFamily
    from services.recon.settings import ReconSettings
    from threegen.errors import ResourceExhausted
    from threegen.runtime.work import Reporter

    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    root = Path(args.root)
    started = time.perf_counter()
    if not (root / "hunyuan3d-paint-v2-0" / "model_index.json").exists():
        write_hunyuan3d(root)
    report["write_seconds"] = round(time.perf_counter() - started, 1)
    settings = ReconSettings.from_env(
        {},
        families=("hunyuan3d",),
        default_family="hunyuan3d",
        hunyuan3d_model=str(root),
        hunyuan3d_paint_model=str(root),
        hunyuan3d_memory_profile=5,
    )
    family = Hunyuan3DFamily(settings, "cuda")
    started = time.perf_counter()
    family.load()
    report["load_seconds"] = round(time.perf_counter() - started, 1)
    report["component_gib"] = {name: round(c.bytes / GIB, 3) for name, c in family.components().items()}
    print(json.dumps(report, indent=1), flush=True)

    for profile in [int(p) for p in args.profiles.split(",")]:
        for name, component in family.components().items():
            component.resting = profiles.MODES[profile][name]
            component.settle()
        torch.cuda.empty_cache()
        if profile == int(args.profiles.split(",")[0]):
            measure(family, profile, False, args.octree)  # warm-up (allocator, kernels)
        for texture in (False,) if args.shape_only else (False, True):
            run = measure(family, profile, texture, args.octree)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1))  # partial results survive a timeout

    # Refusal: leave a little more than profile 5's estimate free.
    for name, component in family.components().items():
        component.resting = profiles.MODES[5][name]
        component.settle()
    torch.cuda.empty_cache()
    textured = not args.shape_only
    light = profiles.estimate(5, family.components(), args.octree, textured).peak_bytes
    free, _ = torch.cuda.mem_get_info()
    leave = light + 2 * GIB
    blocker = torch.empty(max(0, free - leave), dtype=torch.uint8, device="cuda")
    refusal: dict = {"left_free_gib": round(torch.cuda.mem_get_info()[0] / GIB, 2)}
    try:
        family.run(request(family, 1, textured, args.octree, seed=2), Reporter())
        refusal["profile_1"] = "served"
    except ResourceExhausted as exc:
        refusal["profile_1"] = f"RESOURCE_EXHAUSTED: {exc}"
    try:
        run = measure(family, 5, textured, args.octree)
        refusal["profile_5"] = f"served, peak {run['peak_allocated_gib']} GiB"
    except ResourceExhausted as exc:
        refusal["profile_5"] = f"RESOURCE_EXHAUSTED: {exc}"
    del blocker
    report["refusal"] = refusal
    print(json.dumps(refusal, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
