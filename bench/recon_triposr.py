"""recon/TripoSR on the GPU: full-size architecture at random fp16 weights, image -> GLB.

Prints the in-process phase breakdown at marching-cubes resolution 256, the p50/p95 of the
same request through the recon gRPC service in its own process, and marching cubes on the
GPU (torch) against the CPU (scikit-image) on the same 256^3 grid.

    python -m bench.recon_triposr --out /tmp/bench [--repeat 20] [--resolution 256]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from PIL import Image

from bench.common import cuda_sync, gpu_name, service_process, summary, table, timed
from bench.full_size import write_triposr
from threegen.chunks import Artifact, iter_chunks
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc
from threegen.runtime.work import Reporter

PORT = 50153


def test_image(size: int = 512) -> bytes:
    """An RGBA object on transparency (as imagegen's cut-outs are): no background removal needed."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    disk = (xx - 0.5) ** 2 + (yy - 0.55) ** 2 < 0.3**2
    rgba[..., 0] = (200 * xx).astype(np.uint8)
    rgba[..., 1] = (200 * yy).astype(np.uint8)
    rgba[..., 2] = 120
    rgba[..., 3] = np.where(disk, 255, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def requests(image: bytes, resolution: int):
    options = recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(mc_resolution=resolution))
    yield recon_pb2.ReconstructRequest(params=recon_pb2.ReconstructParams(seed=1, options=options))
    for chunk in iter_chunks(Artifact("input.png", image)):
        yield recon_pb2.ReconstructRequest(image=chunk)


def call(stub, image: bytes, resolution: int) -> int:
    faces = 0
    for response in stub.Reconstruct(requests(image, resolution), timeout=60):
        if response.WhichOneof("event") == "result":
            faces = response.result.stats.face_count
    return faces


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="bench-triposr-"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint: a smoke test on CPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from threegen.tiny import ensure_tiny_weights

        folder = ensure_tiny_weights()["triposr"]
    else:
        folder = out / "triposr"
        if not (folder / "model.ckpt").exists():
            started = time.perf_counter()
            write_triposr(folder, args.device)
            print(f"wrote full-size TripoSR in {time.perf_counter() - started:.1f} s", flush=True)

    from services.recon.families.base import ReconInput
    from services.recon.families.triposr.engine import TripoSRParams
    from services.recon.families.triposr.family import TripoSRFamily
    from services.recon.isosurface import marching_cubes_cpu, marching_cubes_torch
    from services.recon.settings import ReconSettings

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    family = TripoSRFamily(ReconSettings.from_env({}, triposr_model=str(folder)), args.device)
    family.load()
    engine = family.engine
    image = Image.open(io.BytesIO(test_image()))
    job = ReconInput(image, None, "", 1, 1, False, TripoSRParams(mc_resolution=args.resolution))
    phases: dict[str, list[float]] = {}
    faces: list[int] = []

    def once() -> None:
        # The family's run, as the service calls it: engine, mesh assembly and GLB export.
        output = family.run(job, Reporter())
        faces.append(output.stats.face_count)
        for step, seconds in output.timings:
            phases.setdefault(step, []).append(seconds)

    local = summary(timed(once, args.repeat, warmup=3, sync=cuda_sync))
    report = {
        "gpu": gpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "resolution": args.resolution,
        "faces": faces[-1],
        "in_process": local,
        "phases_p50_ms": {k: summary(v[-args.repeat :])["p50_ms"] for k, v in phases.items()},
    }

    codes = engine.model.scene_codes(
        torch.full(
            (1, 3, 512 if not args.tiny else 64, 512 if not args.tiny else 64),
            0.5,
            device=args.device,
            dtype=dtype,
        )
    )
    grid = engine.density_grid(codes[0], args.resolution, Reporter())
    level = float(torch.quantile(grid.flatten()[:: max(1, grid.numel() // 1_000_000)].float(), 0.9))
    if args.device.startswith("cuda"):
        gpu_mc = summary(timed(lambda: marching_cubes_torch(grid, level), 10, 2, cuda_sync))
        report["marching_cubes_gpu"] = gpu_mc
    volume = grid.float().cpu().numpy()
    report["marching_cubes_cpu"] = summary(timed(lambda: marching_cubes_cpu(volume, level), 3, 1))

    env = {
        "THREEGEN_RECON_TRIPOSR_MODEL": str(folder),
        "THREEGEN_RECON_PORT": str(PORT),
        "THREEGEN_RECON_DEVICE": args.device,
        "THREEGEN_RECON_LOG_FORMAT": "plain",
        "HF_HUB_OFFLINE": "1",
    }
    png = test_image()
    with (
        service_process("services.recon", env, PORT, out / "recon.log") as address,
        grpc.insecure_channel(address) as channel,
    ):
        stub = recon_pb2_grpc.ReconServiceStub(channel)
        remote = summary(timed(lambda: call(stub, png, args.resolution), args.repeat, warmup=3))
    report["grpc"] = remote
    report["ratio"] = remote["p50_ms"] / local["p50_ms"]

    print()
    print(
        f"device: {report['gpu']}, {report['date']}; TripoSR full size, random weights, {dtype}, "
        f"marching cubes {args.resolution}^3, {report['faces']} faces"
    )
    rows = [[name, ms] for name, ms in report["phases_p50_ms"].items()]
    print(table(rows, ["phase (in-process)", "p50 ms"]))
    print(
        table(
            [["in-process", local["p50_ms"], local["p95_ms"]], ["gRPC", remote["p50_ms"], remote["p95_ms"]]],
            ["image -> GLB", "p50 ms", "p95 ms"],
        )
    )
    print(f"gRPC / in-process: {report['ratio']:.2f}")
    if "marching_cubes_gpu" in report:
        gpu_ms = report["marching_cubes_gpu"]["p50_ms"]
        cpu_ms = report["marching_cubes_cpu"]["p50_ms"]
        grid_name = f"marching cubes {args.resolution}^3"
        print(f"{grid_name}: GPU (torch) {gpu_ms:.1f} ms, CPU (scikit-image) {cpu_ms:.1f} ms")
    (out / "recon_triposr.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
