"""Step timings that add up: each lap is the time since the previous one (the Timing proto's rule)."""

from __future__ import annotations

import time
from typing import Any


class Laps:
    """Call it with a step's name at the step's end; `timings` holds (step, seconds) in order.

    Given a CUDA device, the GPU's queued work is waited for before each lap, so a step is
    charged its own kernels and not the next step's wait for them.
    """

    def __init__(self, device: Any = None):
        self.timings: list[tuple[str, float]] = []
        self._device = device if getattr(device, "type", None) == "cuda" else None
        self._clock = time.perf_counter()

    def __call__(self, step: str) -> None:
        if self._device is not None:
            import torch

            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self.timings.append((step, now - self._clock))
        self._clock = now
