"""Hot path: text -> GLB + MP4 preview (3 s, 16 fps, 512 px) through the whole gRPC chain.

Writes full-size random-weight SD-Turbo and TripoSR checkpoints in their real layouts, starts
gateway, imagegen, recon and render as four processes on localhost, warms them, then times
`--requests` Generate calls (p50, p95, per-stage breakdown from the result's timings), each
followed by the same stages in this process (engines called directly, no gRPC) for the overhead
ratio, and reads each service's GPU memory (nvidia-smi, per process).

    . bench/gpu_env.sh && python3 -m bench.hotpath --out "$OUT"
    python -m bench.hotpath --tiny --requests 3      # CPU smoke run on tiny checkpoints

Background removal is off (the u2net weights cannot be had here): SD-Turbo's image goes to
TripoSR as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import PIDS, cuda_sync, gpu_name, service_process, summary, table
from threegen.chunks import ArtifactCollector

PORTS = {"imagegen": 50252, "recon": 50253, "render": 50254, "gateway": 50251}
PROMPT = "a wooden chair"


def generate_request(seed: int, size: int, mc: int, seconds: float, fps: int):
    from threegen.gateway.v1 import gateway_pb2
    from threegen.imagegen.v1 import imagegen_pb2
    from threegen.recon.v1 import recon_pb2
    from threegen.render.v1 import render_pb2

    return gateway_pb2.GenerateRequest(
        prompt=PROMPT,
        seed=seed,
        image_options=imagegen_pb2.ImageOptions(width=size, height=size, steps=1),
        recon_options=recon_pb2.ReconOptions(
            remove_background=False, triposr=recon_pb2.TripoSROptions(mc_resolution=mc)
        ),
        outputs=render_pb2.RenderOptions(
            exports=[render_pb2.MESH_FORMAT_GLB],
            preview=render_pb2.PreviewOptions(seconds=seconds, fps=fps, resolution=size),
        ),
    )


def call(stub, request) -> tuple[float, float, dict[str, float], dict[str, int]]:
    """-> (seconds, seconds to the first artifact byte, per-stage seconds, artifact sizes)."""
    started = time.perf_counter()
    first = None
    collector = ArtifactCollector()
    result = None
    for response in stub.Generate(request, timeout=120):
        kind = response.WhichOneof("event")
        if kind == "chunk":
            first = first or time.perf_counter() - started
            collector.add(response.chunk)
        elif kind == "result":
            result = response.result
    seconds = time.perf_counter() - started
    stages: dict[str, float] = {}
    from threegen.common.v1 import common_pb2

    for timing in result.timings:
        stage = common_pb2.Stage.Name(timing.stage).removeprefix("STAGE_").lower()
        name = f"{stage}.{timing.step}" if timing.step else stage
        stages[name] = stages.get(name, 0.0) + timing.seconds
    sizes = {name: len(a.data) for name, a in collector.finished.items()}
    return seconds, first or seconds, stages, sizes


def gpu_memory_by_pid() -> dict[int, int]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.strip().splitlines():
        pid, mib = (part.strip() for part in line.split(","))
        found[int(pid)] = int(mib)
    return found


def in_process(folders: dict[str, Path], device: str, args):
    """The same three stages, engines called directly: image, mesh, GLB + MP4. Returns a
    function running them once for a seed and the dict of times it appends to, and a stop."""
    from services.imagegen.models import ClipScorer, LoraLibrary, ModelStore
    from services.imagegen.params import ImageParams
    from services.imagegen.pipeline import ImageGenerator
    from services.imagegen.settings import ImageGenSettings
    from services.recon.families.base import ReconInput
    from services.recon.families.triposr.family import TripoSRFamily
    from services.recon.settings import ReconSettings
    from services.render.engine import RenderEngine, RenderJob
    from services.render.params import PreviewParams, RenderPlan
    from threegen.background import BackgroundRemover
    from threegen.common.v1 import common_pb2
    from threegen.errors import Violations
    from threegen.recon.v1 import recon_pb2
    from threegen.runtime.work import Reporter

    settings = ImageGenSettings.from_env(
        {}, sd_turbo_model=str(folders["sd-turbo"]), clip_model=str(folders["clip"]), preload=("sd-turbo",)
    )
    store = ModelStore(settings, device)
    with store.use("sd-turbo", pinned=True):
        pass
    generator = ImageGenerator(
        store, LoraLibrary(""), ClipScorer(str(folders["clip"]), device), BackgroundRemover(), 0.0, 1
    )
    family = TripoSRFamily(ReconSettings.from_env({}, triposr_model=str(folders["triposr"])), device)
    family.load()
    options = family.parse_options(recon_pb2.TripoSROptions(mc_resolution=args.mc), Violations())
    from services.render.gl import choose_platform

    choose_platform("auto")
    renderer = RenderEngine()
    plan = RenderPlan(preview=PreviewParams(seconds=args.seconds, fps=args.fps, resolution=args.size))
    times: dict[str, list[float]] = {"imagegen": [], "recon": [], "render": [], "total": []}

    def once(i: int, record: bool = True) -> None:
        started = time.perf_counter()
        params = ImageParams(prompt=PROMPT, seed=i, model="sd-turbo", steps=1, num_views=1, top_k=1,
                             width=args.size, height=args.size)  # fmt: skip
        picture = generator.generate(params, Reporter()).views[0].image
        cuda_sync()
        t1 = time.perf_counter()
        job = ReconInput(picture, None, PROMPT, i, common_pb2.GEOMETRY_KIND_MESH, False, options)
        output = family.run(job, Reporter())
        cuda_sync()
        t2 = time.perf_counter()
        renderer.run(RenderJob(output.artifacts[0].data, plan, "mesh.glb"), Reporter())
        t3 = time.perf_counter()
        if record:
            for name, value in (("imagegen", t1 - started), ("recon", t2 - t1), ("render", t3 - t2),
                                ("total", t3 - started)):  # fmt: skip
                times[name].append(value)

    return once, times, generator.batcher.stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="bench-hotpath-"))
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--mc", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints (CPU smoke run)")
    parser.add_argument("--weights", default="", help="checkpoint folder (default: OUT/weights)")
    parser.add_argument(
        "--png-level", type=int, default=0, help="PNG zlib level the gateway asks imagegen for (0 = stored)"
    )
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = Path(args.weights) if args.weights else out / "weights"
    if args.tiny:
        from threegen.tiny import ensure_tiny_weights

        folders = ensure_tiny_weights(weights)
        args.size, args.mc = min(args.size, 64), min(args.mc, 48)
    else:
        from bench.full_size import write_clip, write_sd_turbo, write_triposr

        folders = {"sd-turbo": weights / "sd-turbo", "triposr": weights / "triposr", "clip": weights / "clip"}
        started = time.perf_counter()
        writers = {"sd-turbo": write_sd_turbo, "triposr": lambda f: write_triposr(f, device="cuda"),
                   "clip": write_clip}  # fmt: skip
        for name, write in writers.items():
            done = folders[name] / ".complete"  # a folder a cut-off run left half-written is written again
            if not done.exists():
                write(folders[name])
                done.touch()
        print(f"checkpoints ready in {time.perf_counter() - started:.1f} s", flush=True)

    common = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env = {
        "imagegen": {
            "THREEGEN_IMAGEGEN_PORT": str(PORTS["imagegen"]),
            "THREEGEN_IMAGEGEN_SD_TURBO_MODEL": str(folders["sd-turbo"]),
            "THREEGEN_IMAGEGEN_CLIP_MODEL": str(folders["clip"]),
            "THREEGEN_IMAGEGEN_PRELOAD": "sd-turbo",
            "THREEGEN_IMAGEGEN_DEFAULT_MODEL": "sd-turbo",
            "THREEGEN_IMAGEGEN_BATCH_WINDOW_MS": "0",
        },
        "recon": {
            "THREEGEN_RECON_PORT": str(PORTS["recon"]),
            "THREEGEN_RECON_TRIPOSR_MODEL": str(folders["triposr"]),
        },
        "render": {"THREEGEN_RENDER_PORT": str(PORTS["render"])},
        "gateway": {
            "THREEGEN_GATEWAY_PORT": str(PORTS["gateway"]),
            "THREEGEN_GATEWAY_IMAGEGEN_ADDRESS": f"127.0.0.1:{PORTS['imagegen']}",
            "THREEGEN_GATEWAY_RECON_ADDRESS": f"127.0.0.1:{PORTS['recon']}",
            "THREEGEN_GATEWAY_RENDER_ADDRESS": f"127.0.0.1:{PORTS['render']}",
            "THREEGEN_GATEWAY_DATA_DIR": str(out / "gateway-data"),
            "THREEGEN_GATEWAY_CACHE": "false",  # every request does the work
            "THREEGEN_GATEWAY_IMAGE_PNG_LEVEL": str(args.png_level),
        },
    }
    modules = {"imagegen": "services.imagegen", "recon": "services.recon", "render": "services.render",
               "gateway": "gateway"}  # fmt: skip
    report: dict = {
        "gpu": gpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "requests": args.requests,
        "png_level": args.png_level,
    }
    report.update(size=args.size, mc_resolution=args.mc, preview=[args.seconds, args.fps])
    from threegen.gateway.v1 import gateway_pb2_grpc

    with contextlib.ExitStack() as stack:
        for name in ("imagegen", "recon", "render", "gateway"):
            variables = {**common, **env[name], f"THREEGEN_{name.upper()}_LOG_FORMAT": "plain"}
            stack.enter_context(service_process(modules[name], variables, PORTS[name], out / f"{name}.log"))
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{PORTS['gateway']}"))
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        local = None if args.skip_in_process else in_process(folders, device, args)
        for seed in range(3):
            call(stub, generate_request(1000 + seed, args.size, args.mc, args.seconds, args.fps))
            if local:
                local[0](1000 + seed, record=False)
        # In turns, a request through the chain then the same stages in this process: drift of a
        # lent machine over the run (it was up to 20%) falls on both alike.
        totals, firsts, stage_samples, sizes = [], [], {}, {}
        for seed in range(args.requests):
            seconds, first, stages, sizes = call(
                stub, generate_request(seed, args.size, args.mc, args.seconds, args.fps)
            )
            totals.append(seconds)
            firsts.append(first)
            for name, value in stages.items():
                stage_samples.setdefault(name, []).append(value)
            if local:
                local[0](seed)
        report["end_to_end"] = summary(totals)
        report["first_artifact_byte"] = summary(firsts)
        report["stages_p50_ms"] = {k: statistics.median(v) * 1000 for k, v in sorted(stage_samples.items())}
        report["artifact_bytes"] = sizes
        memory = gpu_memory_by_pid()
        pids = {name: PIDS[module] for name, module in modules.items()} | {"bench (in-process)": os.getpid()}
        report["gpu_memory_mib"] = {name: memory.get(pid) for name, pid in pids.items()}
        report["gpu_memory_mib_by_pid"] = memory  # as nvidia-smi lists it, should a pid not match
        print(json.dumps(report, indent=1), flush=True)

        if local:
            local[2]()
    if local:
        times = local[1]
        report["in_process_p50_ms"] = {k: statistics.median(v) * 1000 for k, v in times.items()}
        grpc_total = report["end_to_end"]["p50_ms"]
        report["grpc_overhead_ratio"] = grpc_total / report["in_process_p50_ms"]["total"] - 1
    rows = [
        ["end to end (gRPC, 4 processes)", report["end_to_end"]["p50_ms"], report["end_to_end"]["p95_ms"]]
    ]
    if "in_process_p50_ms" in report:
        for name, value in report["in_process_p50_ms"].items():
            rows.append([f"in-process {name}", value, ""])
    print(table(rows, ["hot path", "p50 ms", "p95 ms"]))
    (out / "hotpath.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
