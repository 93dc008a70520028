"""imagegen on the GPU: full-size SD-Turbo / SDXL-Turbo (and CLIP) at random fp16 weights, 512x512.

For 1 and 4 views (1 step, 4 views re-ranked by CLIP) it times the engine in-process and the
same request through the gRPC service running in its own process, and prints p50/p95 and the
ratio (the two timed in turns); then images/s from 8 concurrent clients with dynamic batching
on (for each batch limit in --max-batch) and off, with how many requests shared each pass.

    python -m bench.imagegen --out /tmp/bench [--models sd-turbo,sdxl-turbo] [--repeat 20] \
        [--max-batch 4,8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.common import cuda_sync, gpu_name, service_process, summary, table, timed
from bench.full_size import write_clip, write_sd_turbo, write_sdxl_turbo
from threegen.imagegen.v1 import imagegen_pb2, imagegen_pb2_grpc
from threegen.runtime.work import Reporter

WRITERS = {"sd-turbo": write_sd_turbo, "sdxl-turbo": write_sdxl_turbo}
ENUM = {"sd-turbo": imagegen_pb2.IMAGE_MODEL_SD_TURBO, "sdxl-turbo": imagegen_pb2.IMAGE_MODEL_SDXL_TURBO}
PROMPT = "a wooden chair, product photo"
PORT = 50152


SIZE = {"value": 512}
PNG_LEVEL = {"value": -1}  # -1: the service's default


def request(model: str, views: int, seed: int) -> imagegen_pb2.GenerateRequest:
    size = SIZE["value"]
    options = imagegen_pb2.ImageOptions(
        model=ENUM[model], steps=1, width=size, height=size, num_views=views, top_k=views
    )
    message = imagegen_pb2.GenerateRequest(prompt=PROMPT, seed=seed, options=options)
    if PNG_LEVEL["value"] >= 0:
        message.png_level = PNG_LEVEL["value"]
    return message


SERVICE_TIMINGS: dict[tuple[str, int, str], list[float]] = {}
BATCHES: dict[str, list[int]] = {}
IN_PROCESS_TIMINGS: dict[tuple[str, int, str], list[float]] = {}


def call(stub, model: str, views: int, seed: int, record: bool = True, label: str = "") -> int:
    """One request; returns how many requests shared its forward pass."""
    shared = 0
    for response in stub.Generate(request(model, views, seed), timeout=120):
        if response.WhichOneof("event") == "result":
            shared = response.result.batch_requests
            if record:
                for timing in response.result.timings:
                    SERVICE_TIMINGS.setdefault((model + label, views, timing.step), []).append(
                        timing.seconds * 1000
                    )
    return shared


def throughput(address: str, model: str, clients: int, seconds: float, label: str = "") -> float:
    counts: list[int] = []
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = imagegen_pb2_grpc.ImageGenServiceStub(channel)
            count = 0
            while time.monotonic() < stop:
                shared = call(stub, model, 1, index * 100_000 + count, record=False)
                if label:
                    BATCHES.setdefault(label, []).append(shared)
                count += 1
            counts.append(count)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def environment(model: str, folder: Path, clip: Path, window_ms: str = "10", **extra: str) -> dict[str, str]:
    key = model.replace("-", "_").upper()
    return {
        **{f"THREEGEN_IMAGEGEN_{name.upper()}": value for name, value in extra.items()},
        f"THREEGEN_IMAGEGEN_{key}_MODEL": str(folder),
        "THREEGEN_IMAGEGEN_PRELOAD": model,
        "THREEGEN_IMAGEGEN_DEFAULT_MODEL": model,
        "THREEGEN_IMAGEGEN_CLIP_MODEL": str(clip),
        "THREEGEN_IMAGEGEN_PORT": str(PORT),
        "THREEGEN_IMAGEGEN_BATCH_WINDOW_MS": window_ms,
        "THREEGEN_IMAGEGEN_LOG_FORMAT": "plain",
        "HF_HUB_OFFLINE": "1",
    }


def engine(model: str, folder: Path, clip: Path, device: str, size: int, label: str = "", **extra: str):
    """The service's engine in this process; returns {views: one timed-request function}, stop."""
    from services.imagegen.models import ClipScorer, LoraLibrary, ModelStore
    from services.imagegen.params import ImageParams
    from services.imagegen.pipeline import ImageGenerator
    from services.imagegen.settings import ImageGenSettings
    from threegen.background import BackgroundRemover

    settings = ImageGenSettings.from_env(environment(model, folder, clip, **extra))
    store = ModelStore(settings, device)
    with store.use(model, pinned=True):
        pass
    scorer = ClipScorer(str(clip), device)
    scorer.load()
    generator = ImageGenerator(store, LoraLibrary(""), scorer, BackgroundRemover(), 0.0, 8)
    calls = {}
    for views in (1, 4):
        params = ImageParams(
            prompt=PROMPT, seed=1, model=model, steps=1, num_views=views, top_k=views, width=size, height=size
        )

        def once(p: ImageParams = params, views: int = views) -> None:
            for step, seconds in generator.generate(p, Reporter()).timings:
                IN_PROCESS_TIMINGS.setdefault((model + label, views, step), []).append(seconds * 1000)

        calls[views] = once
    return calls, generator.batcher.stop


def interleaved(calls: dict[str, object], repeat: int, warmup: int = 3) -> dict[str, dict]:
    """Time several variants in turns (a, b, a, b, ...): drift of the machine over the minutes
    of a run (clocks, other tenants) then falls on every variant alike."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            samples[name] += timed(fn, 1, 0, cuda_sync)
    return {name: summary(values) for name, values in samples.items()}


def free_gpu() -> None:
    """Return the in-process engine's memory before the next one or the service loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="bench-imagegen-"))
    parser.add_argument("--models", default="sd-turbo,sdxl-turbo")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--max-batch", default="4,8", help="batch limits to measure throughput with, e.g. 8,4"
    )
    parser.add_argument(
        "--png-level", type=int, default=-1, help="GenerateRequest.png_level (-1: the service's default, 1)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints at 64 px: a smoke test on CPU")
    args = parser.parse_args()
    SIZE["value"] = 64 if args.tiny else 512
    PNG_LEVEL["value"] = args.png_level
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    report: dict = {"gpu": gpu_name(), "date": time.strftime("%Y-%m-%d"), "png_level": args.png_level}
    tiny = None
    if args.tiny:
        from threegen.tiny import ensure_tiny_weights

        tiny = ensure_tiny_weights()
    clip = tiny["clip"] if tiny else out / "clip"
    if not (clip / "config.json").exists():
        write_clip(clip, args.device)
    rows = []
    for model in models:
        folder = tiny[model] if tiny else out / model
        if not (folder / "model_index.json").exists():
            started = time.perf_counter()
            WRITERS[model](folder, args.device)
            print(f"wrote full-size {model} in {time.perf_counter() - started:.1f} s", flush=True)
        local, stop_local = engine(model, folder, clip, args.device, SIZE["value"])
        limits = [int(n) for n in args.max_batch.split(",")]
        with contextlib.ExitStack() as services:
            address = services.enter_context(
                service_process(
                    "services.imagegen",
                    environment(model, folder, clip, max_batch_images=str(limits[0])),
                    PORT,
                    out / f"imagegen-{model}.log",
                )
            )
            stub = imagegen_pb2_grpc.ImageGenServiceStub(
                services.enter_context(grpc.insecure_channel(address))
            )
            measured = {}
            for v in (1, 4):
                calls = {"in_process": local[v], "grpc": lambda v=v, s=stub, m=model: call(s, m, v, 7)}
                measured[v] = interleaved(calls, args.repeat)
                print(
                    model,
                    v,
                    "view(s):",
                    {k: round(f["p50_ms"], 1) for k, f in measured[v].items()},
                    flush=True,
                )
            stop_local()
            del local
            free_gpu()
            local = {v: measured[v]["in_process"] for v in (1, 4)}
            remote = {v: measured[v]["grpc"] for v in (1, 4)}
            report[f"{model}/interleaved"] = measured
            throughput(address, model, args.clients, 2.0)  # warm-up: kernels, allocator, cudnn plans
            batched = {
                limits[0]: throughput(address, model, args.clients, args.seconds, f"{model}/{limits[0]}")
            }
        for limit in limits[1:]:
            with service_process(
                "services.imagegen",
                environment(model, folder, clip, max_batch_images=str(limit)),
                PORT,
                out / f"imagegen-{model}-max{limit}.log",
            ) as address:
                throughput(address, model, args.clients, 2.0)
                batched[limit] = throughput(address, model, args.clients, args.seconds, f"{model}/{limit}")
        with service_process(
            "services.imagegen",
            environment(model, folder, clip, "0"),
            PORT,
            out / f"imagegen-{model}-nobatch.log",
        ) as address:
            throughput(address, model, args.clients, 2.0)
            unbatched = throughput(address, model, args.clients, args.seconds)
        for views in (1, 4):
            ratio = remote[views]["p50_ms"] / local[views]["p50_ms"]
            rows.append(
                [
                    model,
                    views,
                    local[views]["p50_ms"],
                    local[views]["p95_ms"],
                    remote[views]["p50_ms"],
                    remote[views]["p95_ms"],
                    ratio,
                ]
            )
            report[f"{model}/views{views}"] = {
                "in_process": local[views],
                "grpc": remote[views],
                "ratio": ratio,
            }
        best = max(batched, key=batched.get)
        report[f"{model}/throughput"] = {
            "batching": batched[best],
            "max_batch_images": best,
            "by_limit": {limit: {"img_s": ips, "ratio": ips / unbatched} for limit, ips in batched.items()},
            "no_batching": unbatched,
            "ratio": batched[best] / unbatched,
            "clients": args.clients,
            "requests_per_pass": {
                label: {n: shares.count(n) for n in sorted(set(shares))}
                for label, shares in BATCHES.items()
                if label.startswith(model + "/")
            },
        }
        print(rows[-2:], report[f"{model}/throughput"], flush=True)
    print()
    size = SIZE["value"]
    print(f"device: {report['gpu']}, {report['date']}; random weights, {size}x{size}, 1 step; times in ms")
    print(table(rows, ["model", "views", "in-proc p50", "p95", "gRPC p50", "p95", "gRPC/in-proc"]))
    for model in models:
        t = report[f"{model}/throughput"]
        for limit, figures in t["by_limit"].items():
            print(
                f"{model}: {args.clients} clients, batches of at most {limit}: {figures['img_s']:.1f} img/s "
                f"batched vs {t['no_batching']:.1f} unbatched = {figures['ratio']:.2f}x; "
                f"requests per pass (seen by requests): {t['requests_per_pass'].get(f'{model}/{limit}')}"
            )
    for (model, views, step), values in sorted(SERVICE_TIMINGS.items()):
        local = IN_PROCESS_TIMINGS.get((model, views, step), [float("nan")])
        service_ms, local_ms = sorted(values)[len(values) // 2], sorted(local)[len(local) // 2]
        print(
            f"  {model} {views} view(s) {step}: service p50 {service_ms:.1f} ms, in-process {local_ms:.1f} ms"
        )
    report["steps_p50_ms"] = {
        f"{where}/{model}/views{views}/{step}": sorted(values)[len(values) // 2]
        for where, timings in (("service", SERVICE_TIMINGS), ("in_process", IN_PROCESS_TIMINGS))
        for (model, views, step), values in timings.items()
    }
    (out / "imagegen.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
