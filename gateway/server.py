"""gateway gRPC servicer: the public API. Thin: orchestration lives in pipeline.py, jobs in jobs.py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from gateway.backends import Backends, call_metadata
from gateway.jobs import JobManager, cache_key
from gateway.pipeline import GeneratePipeline
from gateway.settings import GatewaySettings
from gateway.store import JobStore
from threegen.chunks import CHUNK_BYTES, ArtifactCollector, FileAssembler, media_type_for
from threegen.common.v1 import common_pb2
from threegen.errors import FailedPrecondition, InvalidArgument, NotFound
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.imagegen.v1 import imagegen_pb2
from threegen.images import decode_image
from threegen.logs import REQUEST_ID
from threegen.recon.v1 import recon_pb2
from threegen.runtime.server import Runtime, Service

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
MAX_PAGE = 500


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, runtime: Runtime, settings: GatewaySettings, state: dict):
        self.runtime = runtime
        self.settings = settings
        self.state = state

    @property
    def jobs(self) -> JobManager:
        return self.state["jobs"]

    @property
    def store(self) -> JobStore:
        return self.state["store"]

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        self.runtime.require_ready()
        key = cache_key(request) if self.settings.cache else None
        if key is not None and (hit := self.store.cached_job(key)) is not None:
            async for response in self._replay(hit.id, hit.result or b""):
                yield response
            return
        pipeline: GeneratePipeline = self.state["pipeline"]
        prepared = await pipeline.check(request)
        ticket = self.runtime.enter()
        collector = ArtifactCollector(verify=False) if key is not None else None  # our own stream
        result = None
        try:
            async for progress in self.runtime.queued_progress(ticket):
                yield gateway_pb2.GenerateResponse(progress=progress)
            async for response in pipeline.generate(request, context.time_remaining, prepared):
                if collector is not None and response.WhichOneof("event") == "chunk":
                    collector.add(response.chunk)
                elif response.WhichOneof("event") == "result":
                    result = response.result
                yield response
        finally:
            ticket.release()
        if key is not None and result is not None and collector is not None:
            await asyncio.to_thread(self._remember, request, key, result, collector)

    def _remember(
        self,
        request: gateway_pb2.GenerateRequest,
        key: str,
        result: gateway_pb2.GenerateResult,
        collector: ArtifactCollector,
    ) -> None:
        """Keep a seeded synchronous result as a finished job, so the same request is served from it."""
        job = self.store.create(request, gateway_pb2.JOB_STATUS_RUNNING, key)
        for artifact in collector.finished.values():
            self.store.write_artifact(job.id, artifact.name, artifact.data)
        self.store.finish(job.id, gateway_pb2.JOB_STATUS_SUCCEEDED, result=result.SerializeToString())

    async def _replay(self, job_id: str, result_bytes: bytes) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        result = gateway_pb2.GenerateResult.FromString(result_bytes)
        yield gateway_pb2.GenerateResponse(
            progress=common_pb2.Progress(
                stage=common_pb2.STAGE_DELIVER,
                step="cached",
                fraction=1.0,
                overall_fraction=1.0,
                message="served from the stored result of an identical request",
            )
        )
        for info in result.artifacts:
            async for chunk in self._file_chunks(job_id, info.name):
                yield gateway_pb2.GenerateResponse(chunk=chunk)
        result.cached = True
        result.request_id = REQUEST_ID.get()
        yield gateway_pb2.GenerateResponse(result=result)

    async def _file_chunks(self, job_id: str, name: str) -> AsyncIterator[common_pb2.Chunk]:
        try:
            path = self.store.artifact_path(job_id, name)
        except ValueError:
            raise InvalidArgument([("name", "must be a plain file name")]) from None
        if not path.is_file():
            raise NotFound(f"job {job_id} has no artifact {name!r}")
        total = path.stat().st_size
        digest = hashlib.sha256()
        offset = 0
        blocks = self.store.read_chunks(job_id, name, CHUNK_BYTES)
        while True:
            block = await asyncio.to_thread(next, blocks, None)
            if block is None and offset > 0:
                return
            block = block or b""
            digest.update(block)
            last = offset + len(block) >= total
            yield common_pb2.Chunk(
                name=name,
                media_type=media_type_for(name),
                offset=offset,
                total_size=total,
                data=block,
                last=last,
                sha256=digest.hexdigest() if last else "",
            )
            offset += len(block)
            if last:
                return

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        backends: Backends = self.state["backends"]
        deployments = backends.recon_deployments()
        names = [
            "imagegen",
            *("recon" if f is None else f"recon-{common_pb2.Family.Name(f)}" for f, _ in deployments),
        ]
        calls = [
            backends.imagegen.ListModels(
                imagegen_pb2.ListModelsRequest(), timeout=5, metadata=call_metadata()
            ),
            *(
                stub.ListModels(recon_pb2.ListModelsRequest(), timeout=5, metadata=call_metadata())
                for _, stub in deployments
            ),
        ]
        models = []
        replies = await asyncio.gather(*calls, return_exceptions=True)
        families = [None, *(f for f, _ in deployments)]
        for name, family, reply in zip(names, families, replies, strict=True):
            if isinstance(reply, BaseException):
                detail = reply.details() if isinstance(reply, grpc.RpcError) else str(reply)
                models.append(
                    common_pb2.ModelInfo(
                        name=name,
                        service=name,
                        state=common_pb2.MODEL_STATE_ERROR,
                        error=f"{name} unreachable: {detail}",
                    )
                )
            elif name == "imagegen":
                models.extend(reply.models)
            else:
                models.extend(m for m in reply.models if backends.speaks_for(family, m))
        return gateway_pb2.ListModelsResponse(models=models)

    async def UploadInput(
        self,
        request_iterator: AsyncIterator[gateway_pb2.UploadInputRequest],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.UploadInputResponse:
        assembler = FileAssembler("chunk", self.settings.max_upload_bytes)
        iterator = request_iterator.__aiter__()
        while True:
            try:
                message = await asyncio.wait_for(iterator.__anext__(), timeout=30.0)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise InvalidArgument([("chunk", "upload stalled: no message for 30 s")]) from None
            assembler.add(message.chunk)
        artifact = assembler.result()
        await asyncio.to_thread(decode_image, artifact.data, "chunk", self.settings.max_image_pixels)
        input_id = await asyncio.to_thread(self.store.put_input, artifact.data)
        return gateway_pb2.UploadInputResponse(
            input_id=input_id, size_bytes=len(artifact.data), sha256=input_id
        )

    async def SubmitJob(
        self, request: gateway_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SubmitJobResponse:
        self.runtime.require_ready()
        return gateway_pb2.SubmitJobResponse(job=await self.jobs.submit(request.request))

    async def GetJob(
        self, request: gateway_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetJobResponse:
        return gateway_pb2.GetJobResponse(job=self.jobs.to_proto(self.jobs.record(request.job_id)))

    async def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.WatchJobResponse]:
        async for job in self.jobs.watch(request.job_id):
            yield gateway_pb2.WatchJobResponse(job=job)

    async def DownloadArtifact(
        self, request: gateway_pb2.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.DownloadArtifactResponse]:
        job = self.jobs.record(request.job_id)
        if job.status != gateway_pb2.JOB_STATUS_SUCCEEDED:
            status = gateway_pb2.JobStatus.Name(job.status)
            raise FailedPrecondition(f"job {job.id} is {status}; artifacts exist once it has SUCCEEDED")
        async for chunk in self._file_chunks(job.id, request.name):
            yield gateway_pb2.DownloadArtifactResponse(chunk=chunk)

    async def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CancelJobResponse:
        return gateway_pb2.CancelJobResponse(job=await self.jobs.cancel(request.job_id))

    async def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListJobsResponse:
        size = request.page_size or 50
        if size > MAX_PAGE:
            raise InvalidArgument([("page_size", f"must be at most {MAX_PAGE}, got {size}")])
        if request.status not in gateway_pb2.JobStatus.values():
            raise InvalidArgument([("status", f"unknown job status {request.status}")])
        jobs, token = self.jobs.page(size, request.page_token, request.status)
        return gateway_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)


def build(settings: GatewaySettings | None = None) -> Service:
    settings = settings or GatewaySettings.from_env()
    state: dict = {}

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        backends = Backends(settings)
        store = JobStore(Path(settings.data_dir).expanduser())
        pipeline = GeneratePipeline(backends, settings, store.get_input)
        state.update(backends=backends, store=store, pipeline=pipeline)

        async def run_job(
            request: gateway_pb2.GenerateRequest,
        ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
            async for response in pipeline.generate(request, lambda: None):
                yield response

        state["jobs"] = JobManager(store, settings, run_job, pipeline.check)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(runtime, settings, state), server
        )

    async def started(runtime: Runtime) -> None:
        await state["jobs"].start()

    async def stopping() -> None:
        await state["jobs"].stop()
        await state["backends"].close()
        state["store"].close()

    return Service(
        name="gateway",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=register,
        stage=common_pb2.STAGE_DELIVER,
        api_keys=settings.api_keys,
        started=started,
        stopping=stopping,
    )
