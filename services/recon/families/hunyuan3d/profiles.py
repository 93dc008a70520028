"""Hunyuan3D-2's memory profiles 1-5 (as in Hunyuan3D-2GP): what each keeps on the GPU.

| profile | image encoder | DiT | VAE | delight + paint | decode chunk |
|---|---|---|---|---|---|
| 1 | resident | resident | resident | resident | 200,000 points |
| 2 | resident | resident | resident | swapped per stage | 20,000 |
| 3 | swapped | swapped | swapped | swapped | 20,000 |
| 4 | swapped | streamed | swapped | streamed | 8,000 |
| 5 | streamed | streamed | streamed | streamed | 4,000 |

Resident: on the GPU for the whole request (and between requests, when it is the deployment's
profile). Swapped: moved in for its stage only. Streamed: one block at a time (see placement.py).
All weights are fp16 on a GPU (fp32 on a CPU, where profiles change nothing). Peak memory is
estimated from the loaded components' sizes plus the working memory of each stage, and a
request that cannot fit in the GPU's free memory is refused before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.recon.families.placement import Component, Mode

R, S, T = Mode.RESIDENT, Mode.SWAP, Mode.STREAM
MODES = {
    1: {"conditioner": R, "model": R, "vae": R, "delight": R, "paint": R},
    2: {"conditioner": R, "model": R, "vae": R, "delight": S, "paint": S},
    3: {"conditioner": S, "model": S, "vae": S, "delight": S, "paint": S},
    4: {"conditioner": S, "model": T, "vae": S, "delight": T, "paint": T},
    5: {"conditioner": T, "model": T, "vae": T, "delight": T, "paint": T},
}
NUM_CHUNKS = {1: 200_000, 2: 20_000, 3: 20_000, 4: 8_000, 5: 4_000}

GIB = 1 << 30
# Working memory per stage beyond weights (fp16, batch 1). Decode: per cell of the (R+1)^3 grid
# (query points, logits, the isosurface pass's buffers) and per point of one decoder chunk
# (cross-attention and MLP activations). Fitted to peaks measured on an H100 at octree 256,
# full-size random weights (bench/recon_hunyuan3d.py, 2026-11-23): 4.34 GiB above the resident
# weights with 200k-point chunks, 2.0 GiB with 20k and with 4k; rounded up.
DECODE_BYTES_PER_CELL = 128
DECODE_BYTES_PER_CHUNK_POINT = 13 * 1024
ENCODE_BYTES = int(0.25 * GIB)
DENOISE_BYTES = int(0.5 * GIB)
DELIGHT_BYTES = int(1.5 * GIB)
PAINT_BYTES = int(4.0 * GIB)


@dataclass(frozen=True)
class Estimate:
    profile: int
    peak_bytes: int
    resident_bytes: int


def stage_work(stage: str, octree_resolution: int, num_chunks: int) -> int:
    if stage == "vae":
        return (
            octree_resolution + 1
        ) ** 3 * DECODE_BYTES_PER_CELL + num_chunks * DECODE_BYTES_PER_CHUNK_POINT
    return {
        "conditioner": ENCODE_BYTES,
        "model": DENOISE_BYTES,
        "delight": DELIGHT_BYTES,
        "paint": PAINT_BYTES,
    }[stage]


def estimate(
    profile: int, components: dict[str, Component], octree_resolution: int, texture: bool
) -> Estimate:
    """Peak GPU bytes of one request: what stays resident plus the largest stage on top of it."""
    modes = MODES[profile]
    stages = ["conditioner", "model", "vae"] + (["delight", "paint"] if texture else [])
    resident = sum(c.bytes for name, c in components.items() if modes[name] == R or c.resting == R)
    peak_stage = 0
    for stage in stages:
        component = components[stage]
        loaded = 0 if (modes[stage] == R or component.resting == R) else component.gpu_bytes(modes[stage])
        peak_stage = max(peak_stage, loaded + stage_work(stage, octree_resolution, NUM_CHUNKS[profile]))
    return Estimate(profile, resident + peak_stage, resident)
