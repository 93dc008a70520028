"""Run blocking engine code (torch, GL) in a worker thread and stream its progress back.

Engines take a `Reporter`: they call `progress()` between steps, which also raises
`Cancelled` as soon as the caller has gone (client cancel, deadline, server drain), so GPU
work stops at the next step rather than running to the end for nobody.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from threegen.errors import Cancelled

R = TypeVar("R")


@dataclass(frozen=True)
class ProgressEvent:
    step: str
    fraction: float
    message: str = ""


@dataclass(frozen=True)
class Done(Generic[R]):
    value: R


class Reporter:
    """Progress sink and cancellation check handed to engine code."""

    def __init__(
        self,
        emit: Callable[[ProgressEvent], None] | None = None,
        cancel: threading.Event | None = None,
        start: float = 0.0,
        end: float = 1.0,
    ):
        self._emit = emit or (lambda event: None)
        self.cancel_event = cancel or threading.Event()
        self._start = start
        self._end = end
        self.steps_done = 0

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("the caller cancelled or its deadline passed; work stopped")

    def progress(self, step: str, fraction: float, message: str = "") -> None:
        """Report `fraction` (0..1) of this reporter's span done; raise Cancelled if the caller left."""
        self.check()
        self.steps_done += 1
        fraction = min(max(fraction, 0.0), 1.0)
        self._emit(ProgressEvent(step, self._start + (self._end - self._start) * fraction, message))

    def span(self, start: float, end: float) -> Reporter:
        """A reporter for a sub-range of this one's fractions (a phase of the work)."""
        width = self._end - self._start
        child = Reporter(
            self._emit, self.cancel_event, self._start + width * start, self._start + width * end
        )
        return child


async def run_streaming(
    fn: Callable[[Reporter], R], executor: concurrent.futures.Executor | None = None
) -> AsyncIterator[ProgressEvent | Done[R]]:
    """Run fn(reporter) in the executor; yield its progress events, then Done(result).

    If the consumer stops early (its task cancelled, or it closes this generator), the
    reporter is cancelled and this waits for the worker to stop before returning, so
    resources held around it (admission slots, GPU memory) are only freed once the work
    has really ended.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()
    finished = object()

    def emit(event: ProgressEvent) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    reporter = Reporter(emit, cancel)
    ctx = contextvars.copy_context()
    future = loop.run_in_executor(executor, ctx.run, fn, reporter)
    future.add_done_callback(lambda _: queue.put_nowait(finished))
    try:
        while True:
            item = await queue.get()
            if item is finished:
                break
            yield item
        yield Done(future.result())
    finally:
        if not future.done():
            cancel.set()
            await asyncio.wait({future})
            if not future.cancelled():
                future.exception()  # retrieved: the caller is gone, nobody else will
