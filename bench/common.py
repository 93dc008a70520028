"""Helpers for benchmarks: timing statistics, services in their own processes, GPU facts."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
        "min_ms": ordered[0] * 1000,
    }


def timed(
    fn: Callable[[], object], repeat: int, warmup: int = 2, sync: Callable[[], None] | None = None
) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        if sync:
            sync()
        started = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - started)
    return samples


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


PIDS: dict[str, int] = {}  # module -> pid of the service process started for it


@contextmanager
def service_process(module: str, env: dict[str, str], port: int, log: Path, timeout: float = 240):
    """Run `python -m module` with env until SERVING on port; stop it afterwards. A service whose
    models fail to load keeps running NOT_SERVING (by design): its log says so, and we stop then."""
    full = {
        **os.environ,
        **env,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=full, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    PIDS[module] = process.pid
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{module} exited:\n{log.read_text()[-3000:]}")
            if "failed to load its models" in log.read_text(errors="replace"):
                raise RuntimeError(f"{module} could not load its models:\n{log.read_text()[-3000:]}")
            try:
                with grpc.insecure_channel(address) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} not serving after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def table(rows: list[list[object]], header: list[str]) -> str:
    cells = [header, *[[f"{c:.1f}" if isinstance(c, float) else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
