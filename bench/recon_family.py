"""What the full-size recon family benchmarks share: load a family with its memory figures, time
requests through `Family.run` with their peak GPU memory, write the report.

bench/recon_trellis.py, recon_sam3d.py and recon_xcube.py each write their family's published
layout with random weights, put stand-ins where random weights give no useful shape, and hand
their cases to `run_cases`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

GIB = 1 << 30


def new_report() -> dict:
    return {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "runs": {}}


def load(family, report: dict) -> None:
    """`family.load()`, timed, with the weights' size and the memory it holds and peaked at."""
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    family.load()
    report["load_seconds"] = round(time.perf_counter() - started, 1)
    report["weights_gib"] = round(family.memory_bytes / GIB, 3)
    report["allocated_after_load_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
    report["peak_during_load_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)


def measure(family, job) -> dict:
    from threegen.runtime.work import Reporter

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output = family.run(job, Reporter())
    torch.cuda.synchronize()
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "timings": {step: round(s, 3) for step, s in output.timings},
        "faces": output.stats.face_count,
        "points": output.stats.point_count,
        "artifact_bytes": {a.name: len(a.data) for a in output.artifacts},
    }


def run_cases(family, cases: dict, warmup, report: dict, out: str) -> None:
    """One warm-up request (allocator, kernels), then each case once; the report goes to `out`."""
    print(json.dumps(report, indent=1), flush=True)
    measure(family, warmup)
    for name, case in cases.items():
        report["runs"][name] = measure(family, case)
        print(name, json.dumps(report["runs"][name]), flush=True)
    Path(out).write_text(json.dumps(report, indent=1))
