"""Start any threegen service the same way.

What every service gets: a grpc.aio server, grpc.health.v1 (NOT_SERVING until its models
are loaded, then SERVING; NOT_SERVING again while draining), server reflection, Prometheus
metrics, JSON logs with request ids, the error/timing interceptor, bounded admission and a
graceful drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from threegen.common.v1 import common_pb2
from threegen.errors import Unavailable
from threegen.logs import configure as configure_logs
from threegen.runtime import metrics
from threegen.runtime.admission import Admission, Ticket
from threegen.runtime.interceptors import ServiceInterceptor
from threegen.runtime.settings import ServerSettings
from threegen.runtime.work import Done, ProgressEvent, Reporter, run_streaming

log = logging.getLogger("threegen.server")


@dataclass
class Runtime:
    """What a servicer needs from the runtime: admission, a worker pool, readiness."""

    name: str
    settings: ServerSettings
    stage: int = common_pb2.STAGE_UNSPECIFIED
    admission: Admission = field(init=False)
    executor: concurrent.futures.ThreadPoolExecutor = field(init=False)
    ready: bool = False
    load_error: str = ""

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_concurrent, self.settings.max_queued)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent, thread_name_prefix=f"{self.name}-work"
        )

    def require_ready(self) -> None:
        if self.load_error:
            raise Unavailable(f"{self.name} failed to load its models: {self.load_error}")
        if not self.ready:
            raise Unavailable(f"{self.name} is still loading its models; retry shortly")

    def enter(self) -> Ticket:
        try:
            ticket = self.admission.enter()
        except Exception:
            metrics.REJECTED.labels(self.name).inc()
            raise
        self._update_gauges()
        return ticket

    def _update_gauges(self) -> None:
        metrics.IN_FLIGHT.labels(self.name).set(self.admission.running)
        metrics.QUEUED.labels(self.name).set(self.admission.queued)

    async def queued_progress(self, ticket: Ticket) -> AsyncIterator[common_pb2.Progress]:
        """Progress messages while the ticket waits for a slot (nothing if it runs at once)."""
        async for position in ticket.wait():
            self._update_gauges()
            if position:
                yield common_pb2.Progress(
                    stage=common_pb2.STAGE_QUEUED,
                    step="queued",
                    message=f"waiting in queue, position {position}",
                    queue_position=position,
                )
        self._update_gauges()

    async def run(self, fn: Callable[[Reporter], Any]) -> AsyncIterator[common_pb2.Progress | Done[Any]]:
        """Admit (or refuse), report the queue position while waiting, then do the work."""
        ticket = self.enter()
        async for progress in self.queued_progress(ticket):
            yield progress
        async for event in self.work(fn, ticket):
            yield event

    async def work(
        self, fn: Callable[[Reporter], Any], ticket: Ticket
    ) -> AsyncIterator[common_pb2.Progress | Done[Any]]:
        """Run engine code in the worker pool, yielding Progress messages and finally Done.

        The ticket is released as soon as the engine returns (or stops after a cancel),
        before results are streamed back, so the next request can use the slot.
        """
        completed = False
        try:
            async for event in run_streaming(fn, self.executor):
                if isinstance(event, ProgressEvent):
                    metrics.STEPS.labels(self.name).inc()
                    yield common_pb2.Progress(
                        stage=self.stage,
                        step=event.step,
                        fraction=event.fraction,
                        overall_fraction=event.fraction,
                        message=event.message,
                    )
                else:
                    completed = True
                    ticket.release()
                    self._update_gauges()
                    yield event
        finally:
            if not completed:
                metrics.CANCELLED_WORK.labels(self.name).inc()
            ticket.release()
            self._update_gauges()


def read_file(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise RuntimeError(f"{setting}: cannot read {path}: {exc}") from exc


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is set) from PEM files, or None for plaintext."""
    if not settings.tls_cert:
        return None
    key = read_file(settings.tls_key, settings.env_name("tls_key"))
    cert = read_file(settings.tls_cert, settings.env_name("tls_cert"))
    ca = (
        read_file(settings.tls_client_ca, settings.env_name("tls_client_ca"))
        if settings.tls_client_ca
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


@dataclass
class Service:
    """A deployable service: how to register it and how to load its models."""

    name: str
    settings: ServerSettings
    service_names: list[str]
    register: Callable[[grpc.aio.Server, Runtime], None]
    load: Callable[[Runtime], None] | None = None
    stage: int = common_pb2.STAGE_UNSPECIFIED
    close: Callable[[], None] | None = None
    api_keys: tuple[str, ...] = ()
    started: Callable[[Runtime], Awaitable[None]] | None = None  # after the port opens (async set-up)
    stopping: Callable[[], Awaitable[None]] | None = None  # before the drain ends (async tear-down)


class RunningService:
    def __init__(self, service: Service):
        self.service = service
        self.runtime = Runtime(service.name, service.settings, stage=service.stage)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.loaded = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.service.settings
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        interceptor = ServiceInterceptor(self.service.name, self.service.api_keys)
        self.server = grpc.aio.server(interceptors=[interceptor], options=options)
        self.service.register(self.server, self.runtime)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{settings.host}:{settings.port}"
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
        await self.server.start()
        transport = "mTLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext"
        log.info(
            "%s listening on %s:%d (%s)",
            self.service.name,
            settings.host,
            self.port,
            transport,
            extra={"port": self.port},
        )
        if self.service.started is not None:
            await self.service.started(self.runtime)
        self._load_task = asyncio.create_task(self._load())

    async def _set_health(self, status: int) -> None:
        for name in ("", *self.service.service_names):
            await self.health.set(name, status)

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            if self.service.load is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.service.load, self.runtime)
        except Exception as exc:
            self.runtime.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed to load its models", self.service.name)
        else:
            self.runtime.ready = True
            metrics.MODEL_READY.labels(self.service.name).set(1)
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("%s ready in %.1f s", self.service.name, time.perf_counter() - started)
        finally:
            self.loaded.set()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight streams finish."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        grace = self.service.settings.grace_seconds if grace is None else grace
        log.info("%s draining (grace %.0f s)", self.service.name, grace)
        if self.service.stopping is not None:
            await self.service.stopping()
        await self.server.stop(grace)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        self.runtime.executor.shutdown(wait=False, cancel_futures=True)
        if self.service.close is not None:
            self.service.close()
        self.server = None


@contextlib.asynccontextmanager
async def running(service: Service, *, wait_ready: bool = True) -> AsyncIterator[RunningService]:
    """Start a service in this event loop (tests, `threegen up --one-process`)."""
    instance = RunningService(service)
    await instance.start()
    try:
        if wait_ready:
            await instance.loaded.wait()
        yield instance
    finally:
        await instance.stop(grace=1.0)


async def serve(service: Service) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    metrics.serve_metrics(service.settings.metrics_port, service.settings.host)
    instance = RunningService(service)
    await instance.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await instance.stop()


def main(build: Callable[[], Service]) -> None:
    """Entry point of `python -m services.<name>`: configure logs, build, serve."""
    service = build()
    configure_logs(service.name, service.settings.log_level, service.settings.log_format)
    asyncio.run(serve(service))
