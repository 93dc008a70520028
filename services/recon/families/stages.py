"""Sampling parameters of the two-stage flow families (TRELLIS, SAM 3D Objects).

Both sample a sparse structure, then a structured latent, each stage a rectified flow with its
own steps, guidance, guidance interval and time rescale read from the pipeline's files; a
request may override steps and guidance per stage (`<stage>_steps`, `<stage>_guidance` in the
family's options message).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from threegen.errors import Violations

STAGES = ("sparse_structure", "slat")


@dataclass
class Stage:
    steps: int
    cfg_strength: float
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # guidance applies for t in it (flow time in [0, 1])
    rescale_t: float = 1.0


@dataclass
class FlowParams:
    sparse_structure: Stage | None = None  # None: the pipeline's own defaults
    slat: Stage | None = None
    seed: int = 0
    want_mesh: bool = True
    want_gaussians: bool = False


@dataclass
class StageOverrides:
    """Steps and guidance a request asks for per stage; 0 keeps the pipeline's."""

    chosen: dict[str, tuple[int, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Any, prefix: str, violations: Violations) -> StageOverrides:
        overrides = cls()
        for stage in STAGES:
            steps, guidance = getattr(options, f"{stage}_steps"), getattr(options, f"{stage}_guidance")
            if steps:
                violations.in_range(steps, 1, 100, f"{prefix}.{stage}_steps")
            if guidance:
                violations.in_range(guidance, 0.0, 20.0, f"{prefix}.{stage}_guidance")
            overrides.chosen[stage] = (steps, guidance)
        return overrides

    def apply(self, params: FlowParams, defaults: dict[str, Stage]) -> None:
        for stage, (steps, guidance) in self.chosen.items():
            base = defaults[stage]
            setattr(
                params,
                stage,
                replace(base, steps=steps or base.steps, cfg_strength=guidance or base.cfg_strength),
            )


@dataclass
class FlowRequest:
    """What a request asks of a two-stage flow family: the decoded outputs and stage overrides.
    The options messages of both families share these fields (simplify, texture_size,
    with_gaussians, <stage>_steps, <stage>_guidance)."""

    params: FlowParams
    simplify: float = 0.95
    texture_size: int = 1024
    with_gaussians: bool = False
    overrides: StageOverrides = field(default_factory=StageOverrides)

    @classmethod
    def parse(cls, options: Any | None, prefix: str, violations: Violations) -> Any:
        request = cls(FlowParams())
        if options is None:
            return request
        if options.HasField("simplify"):
            violations.in_range(options.simplify, 0.0, 0.99, f"{prefix}.simplify")
            request.simplify = options.simplify
        if options.texture_size:
            violations.in_range(options.texture_size, 128, 4096, f"{prefix}.texture_size")
            request.texture_size = options.texture_size
        request.with_gaussians = options.with_gaussians
        request.overrides = StageOverrides.parse(options, prefix, violations)
        return request
