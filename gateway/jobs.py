"""Asynchronous jobs (seed 003's queue, Runpod's run/status): submit, watch, download, cancel.

Jobs run oldest first on a few worker tasks through the same pipeline as the synchronous
Generate; their artifacts are written to the job store as each file completes. A request is
validated (against the backends) before it is queued, so a bad one is refused at once rather
than becoming a failed job. Progress is kept in memory for watchers and written to the store
at most twice a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.settings import GatewaySettings
from gateway.store import FINISHED, JobRecord, JobStore
from threegen.chunks import ArtifactCollector
from threegen.common.v1 import common_pb2
from threegen.errors import Cancelled, InvalidArgument, NotFound, ResourceExhausted, ServiceError
from threegen.gateway.v1 import gateway_pb2

log = logging.getLogger("threegen.gateway.jobs")

PROGRESS_WRITE_SECONDS = 0.5


def cache_key(request: gateway_pb2.GenerateRequest) -> str | None:
    """Identical requests with an explicit seed produce identical artifacts; others are not cached."""
    if not request.HasField("seed") or request.image_url:
        return None
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class JobManager:
    def __init__(
        self,
        store: JobStore,
        settings: GatewaySettings,
        run: Callable[[gateway_pb2.GenerateRequest], AsyncIterator[gateway_pb2.GenerateResponse]],
        check: Callable[[gateway_pb2.GenerateRequest], object],
    ):
        self.store = store
        self.settings = settings
        self.run = run
        self.check = check
        self.tasks: dict[str, asyncio.Task] = {}
        self.live: dict[str, common_pb2.Progress] = {}
        self.watchers: set[asyncio.Event] = set()
        self.wakeup = asyncio.Event()
        self.workers: list[asyncio.Task] = []
        self.stopping = False

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("requeued %d jobs interrupted by the last shutdown", requeued)
        self.workers = [asyncio.create_task(self._worker(i)) for i in range(self.settings.job_workers)]
        self.workers.append(asyncio.create_task(self._expire_loop()))
        self.wakeup.set()

    async def stop(self) -> None:
        """Stop workers; running jobs stay marked running and are requeued on the next start."""
        self.stopping = True
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.workers = []

    def _notify(self) -> None:
        for event in self.watchers:
            event.set()

    # ---- public operations ------------------------------------------------------------------

    async def submit(self, request: gateway_pb2.GenerateRequest) -> gateway_pb2.Job:
        key = cache_key(request) if self.settings.cache else None
        if key is not None and (hit := self.store.cached_job(key)) is not None:
            job = self.store.create(request, gateway_pb2.JOB_STATUS_RUNNING, key)
            self.store.copy_artifacts(hit.id, job.id)
            self.store.finish(job.id, gateway_pb2.JOB_STATUS_SUCCEEDED, result=hit.result, cached=True)
            return self.to_proto(self.store.get(job.id))  # type: ignore[arg-type]
        queued = self.store.count(gateway_pb2.JOB_STATUS_QUEUED)
        if queued >= self.settings.max_queued_jobs:
            raise ResourceExhausted(
                f"job queue full: {queued} jobs queued "
                f"(max_queued_jobs={self.settings.max_queued_jobs}); retry later"
            )
        await self.check(request)  # type: ignore[misc]
        job = self.store.create(request, gateway_pb2.JOB_STATUS_QUEUED, key)
        self.wakeup.set()
        self._notify()
        return self.to_proto(job)

    def record(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (it may have expired)")
        return job

    def to_proto(self, job: JobRecord) -> gateway_pb2.Job:
        message = gateway_pb2.Job(
            id=job.id,
            status=job.status,
            error_code=job.error_code,
            error_message=job.error_message,
            prompt=job.prompt,
            cached=job.cached,
            created_at=_timestamp(job.created_at),
            started_at=_timestamp(job.started_at),
            finished_at=_timestamp(job.finished_at),
        )
        if job.status == gateway_pb2.JOB_STATUS_QUEUED:
            queued = self.store.queued()
            message.queue_position = queued.index(job.id) + 1 if job.id in queued else 0
            message.progress.CopyFrom(
                common_pb2.Progress(
                    stage=common_pb2.STAGE_QUEUED,
                    step="queued",
                    queue_position=message.queue_position,
                    message=f"waiting in queue, position {message.queue_position}",
                )
            )
        elif job.id in self.live:
            message.progress.CopyFrom(self.live[job.id])
        elif job.progress:
            message.progress.ParseFromString(job.progress)
        if job.result:
            message.result.ParseFromString(job.result)
        if job.field_errors:
            errors = gateway_pb2.Job.FromString(job.field_errors)
            message.field_errors.extend(errors.field_errors)
        return message

    async def watch(self, job_id: str) -> AsyncIterator[gateway_pb2.Job]:
        self.record(job_id)
        changed = asyncio.Event()
        self.watchers.add(changed)
        try:
            last = None
            while True:
                job = self.to_proto(self.record(job_id))
                if job != last:
                    yield job
                    last = job
                if job.status in FINISHED:
                    return
                changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=5.0)
        finally:
            self.watchers.discard(changed)

    async def cancel(self, job_id: str) -> gateway_pb2.Job:
        job = self.record(job_id)
        if job.status == gateway_pb2.JOB_STATUS_QUEUED:
            self.store.finish(
                job_id,
                gateway_pb2.JOB_STATUS_CANCELLED,
                error_code="CANCELLED",
                error_message="cancelled by request",
            )
        elif job.status == gateway_pb2.JOB_STATUS_RUNNING and job_id in self.tasks:
            self.tasks[job_id].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.tasks[job_id]), timeout=30)
        self._notify()
        return self.to_proto(self.record(job_id))

    def page(self, size: int, token: str, status: int) -> tuple[list[gateway_pb2.Job], str]:
        before = None
        if token:
            try:
                stamp, _, last_id = token.partition(":")
                before = (float(stamp), last_id)
            except ValueError:
                raise InvalidArgument([("page_token", "is not a token this gateway returned")]) from None
        records = self.store.page(size + 1, before, status)
        more = len(records) > size
        records = records[:size]
        token = f"{records[-1].created_at!r}:{records[-1].id}" if more and records else ""
        return [self.to_proto(r) for r in records], token

    # ---- workers ------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        while True:
            await self.wakeup.wait()
            queued = self.store.queued()
            if not queued:
                self.wakeup.clear()
                continue
            job_id = queued[0]
            if not self.store.mark_running(job_id):
                continue
            self._notify()
            task = asyncio.current_task()
            assert task is not None
            self.tasks[job_id] = asyncio.create_task(self._execute(job_id))
            try:
                await asyncio.shield(self.tasks[job_id])
            except asyncio.CancelledError:
                if task.cancelling():  # the worker itself is stopping: leave the job to be requeued
                    self.tasks[job_id].cancel()
                    raise
            finally:
                self.tasks.pop(job_id, None)
                self.live.pop(job_id, None)
                self._notify()

    async def _execute(self, job_id: str) -> None:
        job = self.record(job_id)
        collector = ArtifactCollector("chunk", verify=False)  # our own stream
        last_write = 0.0
        try:
            async for response in self.run(job.request):
                kind = response.WhichOneof("event")
                if kind == "progress":
                    self.live[job_id] = response.progress
                    self._notify()
                    if time.monotonic() - last_write > PROGRESS_WRITE_SECONDS:
                        last_write = time.monotonic()
                        self.store.set_progress(job_id, response.progress.SerializeToString())
                elif kind == "chunk":
                    finished = collector.add(response.chunk)
                    if finished is not None:
                        await asyncio.to_thread(
                            self.store.write_artifact, job_id, finished.name, finished.data
                        )
                else:
                    self.store.finish(
                        job_id, gateway_pb2.JOB_STATUS_SUCCEEDED, result=response.result.SerializeToString()
                    )
        except asyncio.CancelledError:
            if not self.stopping:  # on shutdown the job stays running, to be requeued at start
                self.store.finish(
                    job_id,
                    gateway_pb2.JOB_STATUS_CANCELLED,
                    error_code="CANCELLED",
                    error_message="cancelled by request; backend work was stopped",
                )
            raise
        except ServiceError as error:
            errors = gateway_pb2.Job(
                field_errors=[
                    gateway_pb2.FieldError(field=f, description=d)
                    for f, d in getattr(error, "violations", [])
                ]
            )
            code = "CANCELLED" if isinstance(error, Cancelled) else error.code.name
            self.store.finish(
                job_id,
                gateway_pb2.JOB_STATUS_FAILED,
                error_code=code,
                error_message=error.message,
                field_errors=errors.SerializeToString(),
            )
        except Exception as error:
            log.exception("job %s failed", job_id)
            self.store.finish(
                job_id,
                gateway_pb2.JOB_STATUS_FAILED,
                error_code="INTERNAL",
                error_message=f"internal error: {type(error).__name__}",
            )
        finally:
            if job_id in self.live:
                self.store.set_progress(job_id, self.live[job_id].SerializeToString())

    async def _expire_loop(self) -> None:
        while True:
            cutoff = time.time() - self.settings.job_retention_hours * 3600
            removed = await asyncio.to_thread(self.store.expire, cutoff, self.settings.max_jobs_kept)
            if removed:
                log.info("expired %d finished jobs", len(removed))
            await asyncio.sleep(600)
