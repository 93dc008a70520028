"""Real gRPC servers for tests: each runs the production runtime in its own event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from threegen.runtime.server import RunningService, Service


class ServerThread:
    def __init__(self, service: Service, wait_ready: bool = True):
        self.service = service
        self.wait_ready = wait_ready
        self.loop = asyncio.new_event_loop()
        self.instance: RunningService | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"server-{service.name}", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.instance = RunningService(self.service)
        await self.instance.start()
        if self.wait_ready:
            await self.instance.loaded.wait()

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"{self.service.name} did not start in {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def address(self) -> str:
        assert self.instance is not None
        return f"127.0.0.1:{self.instance.port}"

    @property
    def runtime(self):
        assert self.instance is not None
        return self.instance.runtime

    def call(self, coro, timeout: float = 60.0):
        """Run a coroutine on the server's loop (e.g. stop) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self.instance is not None and self._thread.is_alive():
            self.call(self.instance.stop(grace=grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)


@contextmanager
def serving(service: Service, wait_ready: bool = True) -> Iterator[ServerThread]:
    server = ServerThread(service, wait_ready).start()
    try:
        yield server
    finally:
        server.stop()
