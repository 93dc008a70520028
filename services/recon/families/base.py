"""What a recon model family is: a loader, an engine and its capabilities, behind one interface.

The servicer validates the request generically (family known and enabled, input kinds,
output kind), asks the family to validate its own options, then runs it in a worker thread.
Each family lives in its own folder and imports its heavy dependencies only when enabled.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from threegen.chunks import Artifact
from threegen.common.v1 import common_pb2
from threegen.errors import ResourceExhausted, Violations
from threegen.geometry import Stats
from threegen.runtime.work import Reporter


@dataclass
class ReconInput:
    image: Image.Image | None
    mask: Image.Image | None
    prompt: str
    seed: int
    output: int
    remove_background: bool
    options: Any
    remove_background_explicit: bool = False


@dataclass
class ReconOutput:
    artifacts: list[Artifact]
    stats: Stats
    timings: list[tuple[str, float]] = field(default_factory=list)


class Family(abc.ABC):
    name: ClassVar[str]
    family: ClassVar[int]
    options_field: ClassVar[str]
    accepts_image: ClassVar[bool] = True
    accepts_text: ClassVar[bool] = False
    outputs: ClassVar[tuple[int, ...]] = (common_pb2.GEOMETRY_KIND_MESH,)

    def __init__(self, settings: Any, device: str):
        self.settings = settings
        self.device = device
        self.state = common_pb2.MODEL_STATE_AVAILABLE
        self.error = ""
        self.memory_bytes = 0

    @property
    @abc.abstractmethod
    def source(self) -> str:
        """Where the weights come from (setting value)."""

    @abc.abstractmethod
    def parse_options(self, options: Any | None, violations: Violations) -> Any:
        """Validate this family's options message (None when unset); return engine params."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights onto the device (blocking)."""

    @abc.abstractmethod
    def run(self, job: ReconInput, reporter: Reporter) -> ReconOutput:
        """Reconstruct (blocking, in a worker thread); call reporter.progress between steps."""

    @staticmethod
    def resident_bytes(modules: Iterable[Any]) -> int:
        """Bytes held by the parameters and buffers of `modules`, each module counted once."""
        from threegen.weights import module_bytes

        return sum(module_bytes(m) for m in {id(m): m for m in modules}.values())

    @contextmanager
    def memory_guard(self, hint: str = "") -> Iterator[None]:
        """A CUDA out-of-memory inside becomes RESOURCE_EXHAUSTED (the GPU's cache is released
        first), so the request fails clearly and the service goes on."""
        import torch

        try:
            yield
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            detail = str(exc).splitlines()[0]
            raise ResourceExhausted(f"{self.name} ran out of GPU memory{hint}: {detail}") from exc

    def info(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo(
            name=self.name,
            source=self.source,
            state=self.state,
            device=self.device,
            memory_bytes=self.memory_bytes,
            error=self.error,
            family=self.family,
            accepts_text=self.accepts_text,
            accepts_image=self.accepts_image,
            outputs=list(self.outputs),
            service="recon",
        )
