"""Bounded admission: a few requests run, a bounded number wait in line, the rest are refused.

Waiting requests learn their 1-based queue position whenever it changes, so a stream can
report it as progress (seed 003's queue positions).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from threegen.errors import ResourceExhausted


class Ticket:
    def __init__(self, admission: Admission):
        self._admission = admission
        self._granted = asyncio.Event()
        self._changed = asyncio.Event()
        self.running = False
        self.released = False

    @property
    def position(self) -> int:
        """1-based place in the queue; 0 once running."""
        if self.running:
            return 0
        return self._admission._waiting.index(self) + 1

    async def wait(self) -> AsyncIterator[int]:
        """Yield the queue position each time it changes; return once a slot is granted."""
        last = -1
        try:
            while not self._granted.is_set():
                position = self.position
                if position != last:
                    last = position
                    yield position
                self._changed.clear()
                granted = asyncio.ensure_future(self._granted.wait())
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({granted, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    granted.cancel()
                    changed.cancel()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self)

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int):
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._running = 0
        self._waiting: collections.deque[Ticket] = collections.deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def enter(self) -> Ticket:
        """Take a ticket: running at once, queued, or refused with RESOURCE_EXHAUSTED."""
        ticket = Ticket(self)
        if self._running < self.max_concurrent and not self._waiting:
            self._grant(ticket)
        elif len(self._waiting) < self.max_queued:
            self._waiting.append(ticket)
        else:
            raise ResourceExhausted(
                f"server busy: {self._running} running and {len(self._waiting)} queued "
                f"(max_queued={self.max_queued}); retry later"
            )
        return ticket

    def _grant(self, ticket: Ticket) -> None:
        self._running += 1
        ticket.running = True
        ticket._granted.set()

    def _release(self, ticket: Ticket) -> None:
        if ticket.running:
            self._running -= 1
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)
        while self._waiting and self._running < self.max_concurrent:
            self._grant(self._waiting.popleft())
        for waiter in self._waiting:
            waiter._changed.set()
