"""Where each model component sits on a GPU during a request: the memory profiles' machinery.

A pipeline is split into named components (an image encoder, a denoiser, a decoder, ...), used
one stage after another. Each component gets a mode per request:

- RESIDENT: on the GPU from the start of the request (and kept there if it rests there);
- SWAP: moved to the GPU when its stage starts and back to host memory when it ends;
- STREAM: only its small parts go to the GPU; its repeated blocks (the children of its
  ModuleLists) are moved in just before each one runs and out just after, so the GPU holds
  one block at a time. Slowest, smallest.

Components that rest on the GPU (the deployment's profile) are never moved out by a request;
others are back in host memory when the request ends, whatever happened. On a CPU device
everything is a no-op.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

import torch


class Mode(enum.Enum):
    RESIDENT = "resident"
    SWAP = "swap"
    STREAM = "stream"


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The streamable blocks: children of ModuleLists with at least two entries, outermost first."""
    found: list[torch.nn.Module] = []
    taken: set[int] = set()
    for _, child in module.named_modules():
        if id(child) in taken:
            continue
        if isinstance(child, torch.nn.ModuleList) and len(child) >= 2:
            for block in child:
                found.append(block)
                taken.update(id(m) for m in block.modules())
    return found


def tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


class Component:
    def __init__(self, name: str, module: torch.nn.Module, device: torch.device, resting: Mode):
        self.name, self.module, self.device, self.resting = name, module, torch.device(device), resting
        self.blocks = _blocks(module)
        self.bytes = tensor_bytes(module)
        self.largest_block = max((tensor_bytes(b) for b in self.blocks), default=0)
        self.block_bytes = sum(tensor_bytes(b) for b in self.blocks)
        self._hooks: list = []
        self.on_gpu = False

    @property
    def gpu(self) -> bool:
        return self.device.type != "cpu"

    def settle(self) -> None:
        """Put the component where it rests between requests."""
        self.unstream()
        if self.resting == Mode.RESIDENT:
            self.bring()
        else:
            self.evict()

    def bring(self) -> None:
        if self.gpu and not self.on_gpu:
            self.unstream()
            self.module.to(self.device)
            self.on_gpu = True

    def evict(self) -> None:
        if self.gpu and (self.on_gpu or self._hooks):
            self.unstream()
            self.module.to("cpu")
            self.on_gpu = False

    def stream(self) -> None:
        """Small parts to the GPU, blocks in host memory until each runs."""
        if not self.gpu or self.on_gpu or self._hooks:
            return
        inside = {id(m) for b in self.blocks for m in b.modules()}
        for sub in self.module.modules():  # tensors outside the blocks live on the GPU
            if id(sub) in inside:
                continue
            for param in sub.parameters(recurse=False):
                param.data = param.data.to(self.device)
            for name, buffer in sub.named_buffers(recurse=False):
                sub._buffers[name] = buffer.to(self.device)
        for block in self.blocks:
            self._hooks.append(block.register_forward_pre_hook(self._load))
            self._hooks.append(block.register_forward_hook(self._unload))

    def _load(self, block: torch.nn.Module, args) -> None:
        block.to(self.device, non_blocking=True)

    def _unload(self, block: torch.nn.Module, args, output) -> None:
        block.to("cpu")

    def unstream(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def gpu_bytes(self, mode: Mode) -> int:
        """GPU bytes this component needs while it runs in `mode`."""
        if mode == Mode.STREAM and self.blocks:
            return self.bytes - self.block_bytes + 2 * self.largest_block
        return self.bytes


class Stager:
    """Runs the stages of one request with each component in its mode for that request."""

    def __init__(self, components: list[Component]):
        self.components = {c.name: c for c in components}

    def settle(self) -> None:
        for component in self.components.values():
            component.settle()

    @contextlib.contextmanager
    def request(self, modes: dict[str, Mode]) -> Iterator[None]:
        self.modes = modes
        try:
            for name, mode in modes.items():
                if mode == Mode.RESIDENT and name in self.components:
                    self.components[name].bring()
            yield
        finally:
            self.settle()

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[torch.nn.Module]:
        component = self.components[name]
        mode = self.modes.get(name, Mode.SWAP)
        if mode == Mode.STREAM and not component.on_gpu:
            component.stream()
        else:
            component.bring()
        try:
            yield component.module
        finally:
            if mode != Mode.RESIDENT and component.resting != Mode.RESIDENT:
                component.evict()

    def resident_bytes(self) -> int:
        return sum(c.bytes for c in self.components.values() if c.on_gpu)
