"""A small Python client for the gateway: run Generate, follow progress, save the artifacts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from threegen.chunks import Artifact, ArtifactCollector
from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc


@dataclass
class GenerateOutcome:
    result: gateway_pb2.GenerateResult
    artifacts: dict[str, Artifact]
    progress: list[common_pb2.Progress] = field(default_factory=list)

    def save(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for artifact in self.artifacts.values():
            path = folder / Path(artifact.name).name
            path.write_bytes(artifact.data)
            written.append(path)
        return written


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])


def generate(
    address: str,
    request: gateway_pb2.GenerateRequest,
    on_progress: Callable[[common_pb2.Progress], None] | None = None,
    timeout: float | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> GenerateOutcome:
    """Run Generate to the end; artifact chunks are checked (order, size, digest) as they arrive."""
    collector = ArtifactCollector()
    progress: list[common_pb2.Progress] = []
    result = None
    with channel(address) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        for response in stub.Generate(request, timeout=timeout, metadata=metadata):
            kind = response.WhichOneof("event")
            if kind == "progress":
                progress.append(response.progress)
                if on_progress is not None:
                    on_progress(response.progress)
            elif kind == "chunk":
                collector.add(response.chunk)
            else:
                result = response.result
    collector.check_complete()
    if result is None:
        raise RuntimeError("the stream ended without a result")
    return GenerateOutcome(result, collector.finished, progress)
