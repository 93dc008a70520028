"""Dynamic batching: compatible requests share one forward pass on the GPU.

One GPU thread takes the oldest waiting request, gathers every queued request with the same
batch key (model, size, steps, guidance, LoRAs) up to an image limit, and runs them as one
batch. While the GPU is busy, new requests pile up and are batched as soon as it frees. Under
concurrent load (the last batch had several members, or others are already waiting) an idle
GPU also waits for more, until a batch window passes with no new arrival; a lone client never
pays that wait. A request cancelled while queued leaves the queue; one cancelled inside a
batch stops receiving progress, and the batch stops if every member has gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from threegen.errors import Cancelled
from threegen.runtime import metrics
from threegen.runtime.work import Reporter

MAX_WINDOWS = 4  # longest wait for a batch to fill, in batch windows


@dataclass(eq=False)
class Ticket:
    params: Any
    reporter: Reporter
    images: int
    key: tuple
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    gone: bool = False
    batch_size: int = 0
    result: Any = None
    error: BaseException | None = None

    def report(self, step: str, fraction: float, message: str = "") -> bool:
        """Progress for one member; False once its caller has left."""
        if self.gone:
            return False
        try:
            self.reporter.progress(step, fraction, message)
        except Cancelled:
            self.gone = True
        return not self.gone


class Batcher:
    def __init__(self, run: Callable[[list[Ticket]], None], window_s: float, max_images: int):
        self.run = run
        self.window_s = window_s
        self.max_images = max_images
        self._queue: list[Ticket] = []
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.last_batch_size = 0
        self._thread = threading.Thread(target=self._loop, name="imagegen-gpu", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def submit(self, params: Any, reporter: Reporter, images: int, key: tuple) -> Ticket:
        """Queue a request and block until its batch ran; raise Cancelled if the caller left first."""
        ticket = Ticket(params, reporter, images, key)
        with self._cond:
            self._queue.append(ticket)
            self._cond.notify_all()
        while not ticket.done.wait(0.02):
            if reporter.cancelled:
                with self._cond:
                    if not ticket.started:
                        self._queue.remove(ticket)
                        raise Cancelled("cancelled while waiting for the GPU")
                ticket.gone = True  # in a running batch: stop reporting, result is dropped
        if ticket.error is not None:
            raise ticket.error
        if ticket.gone:
            raise Cancelled("the caller left during its batch")
        return ticket

    def _take(self) -> list[Ticket]:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return []
            first = self._queue[0]
            if self.enabled and (self.last_batch_size > 1 or len(self._queue) > 1):
                # The window restarts with each compatible arrival (up to MAX_WINDOWS of them), so
                # the members of the last batch, coming back one after another, meet again in one
                # pass instead of a straggler paying a whole pass of its own.
                cap = time.monotonic() + MAX_WINDOWS * self.window_s
                fill = self._fill(first)
                deadline = min(cap, time.monotonic() + self.window_s)
                while fill < self.max_images and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                    if (now_fill := self._fill(first)) > fill:
                        fill = now_fill
                        deadline = min(cap, time.monotonic() + self.window_s)
            batch, images = [], 0
            for ticket in list(self._queue):
                if ticket.key != first.key:
                    continue
                if batch and (not self.enabled or images + ticket.images > self.max_images):
                    break
                batch.append(ticket)
                images += ticket.images
                self._queue.remove(ticket)
                ticket.started = True
            return batch

    def _fill(self, first: Ticket) -> int:
        return sum(t.images for t in self._queue if t.key == first.key)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self.last_batch_size = len(batch)
            metrics.BATCH_REQUESTS.labels("imagegen").observe(len(batch))
            for ticket in batch:
                ticket.batch_size = len(batch)
            try:
                self.run(batch)
            except BaseException as exc:  # every member learns why
                for ticket in batch:
                    if ticket.error is None and ticket.result is None:
                        ticket.error = exc
            finally:
                self.batches += 1
                for ticket in batch:
                    ticket.done.set()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
