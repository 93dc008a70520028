"""A small Python client for the gateway: connect (TLS, API key), generate, drive jobs, download."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from threegen.chunks import Artifact, ArtifactCollector, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc


@dataclass
class Connection:
    address: str = "localhost:50051"
    api_key: str = ""
    tls_ca: str = ""  # PEM CA bundle: connect with TLS
    tls_cert: str = ""  # client certificate for mTLS
    tls_key: str = ""

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        if not self.tls_ca:
            return grpc.insecure_channel(self.address, options=options)

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(read(self.tls_ca), read(self.tls_key), read(self.tls_cert))
        return grpc.secure_channel(self.address, credentials, options=options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def stub(self, channel: grpc.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(channel)


def from_environment(address: str | None = None) -> Connection:
    return Connection(
        address=address or os.environ.get("THREEGEN_ADDRESS", "localhost:50051"),
        api_key=os.environ.get("THREEGEN_API_KEY", ""),
        tls_ca=os.environ.get("THREEGEN_TLS_CA", ""),
        tls_cert=os.environ.get("THREEGEN_TLS_CERT", ""),
        tls_key=os.environ.get("THREEGEN_TLS_KEY", ""),
    )


@dataclass
class GenerateOutcome:
    result: gateway_pb2.GenerateResult
    artifacts: dict[str, Artifact]
    progress: list[common_pb2.Progress] = field(default_factory=list)

    def save(self, folder: Path) -> list[Path]:
        return save(self.artifacts.values(), folder)


def save(artifacts, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for artifact in artifacts:
        path = folder / Path(artifact.name).name
        path.write_bytes(artifact.data)
        written.append(path)
    return written


def generate(
    connection: Connection | str,
    request: gateway_pb2.GenerateRequest,
    on_progress: Callable[[common_pb2.Progress], None] | None = None,
    timeout: float | None = None,
) -> GenerateOutcome:
    """Run Generate to the end; artifact chunks are checked (order, size, digest) as they arrive."""
    connection = Connection(connection) if isinstance(connection, str) else connection
    collector = ArtifactCollector()
    progress: list[common_pb2.Progress] = []
    result = None
    with connection.channel() as channel:
        for response in connection.stub(channel).Generate(
            request, timeout=timeout, metadata=connection.metadata
        ):
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


def upload(connection: Connection, path: Path) -> gateway_pb2.UploadInputResponse:
    artifact = Artifact(path.name, path.read_bytes())
    with connection.channel() as channel:
        requests = (gateway_pb2.UploadInputRequest(chunk=chunk) for chunk in iter_chunks(artifact))
        return connection.stub(channel).UploadInput(requests, timeout=120, metadata=connection.metadata)


def download(connection: Connection, job_id: str, names: list[str] | None = None) -> dict[str, Artifact]:
    with connection.channel() as channel:
        stub = connection.stub(channel)
        if not names:
            job = stub.GetJob(
                gateway_pb2.GetJobRequest(job_id=job_id), timeout=30, metadata=connection.metadata
            ).job
            names = [a.name for a in job.result.artifacts]
        collector = ArtifactCollector()
        for name in names:
            request = gateway_pb2.DownloadArtifactRequest(job_id=job_id, name=name)
            for response in stub.DownloadArtifact(request, timeout=300, metadata=connection.metadata):
                collector.add(response.chunk)
        collector.check_complete()
        return collector.finished


def watch(connection: Connection, job_id: str) -> Iterator[gateway_pb2.Job]:
    with connection.channel() as channel:
        request = gateway_pb2.WatchJobRequest(job_id=job_id)
        for response in connection.stub(channel).WatchJob(request, metadata=connection.metadata):
            yield response.job
