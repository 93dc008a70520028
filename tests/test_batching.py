"""The batcher's scheduling rules, with a plain function standing in for the GPU step."""

from __future__ import annotations

import threading
import time

import pytest

from services.imagegen.batching import Batcher
from threegen.errors import Cancelled
from threegen.runtime.work import Reporter


def recording_batcher(window_s: float, max_images: int = 8, hold: threading.Event | None = None):
    batches: list[list[str]] = []

    def run(tickets) -> None:
        if hold is not None:
            hold.wait(5)
        batches.append([t.params for t in tickets])
        for ticket in tickets:
            ticket.result = ticket.params

    return Batcher(run, window_s, max_images), batches


def submit_in_thread(
    batcher: Batcher, name: str, key: tuple, reporter: Reporter | None = None, images: int = 1
):
    outcome: dict = {}

    def go() -> None:
        try:
            outcome["result"] = batcher.submit(name, reporter or Reporter(), images, key).result
        except Cancelled as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    return thread, outcome


def test_lone_request_runs_at_once_without_the_window() -> None:
    batcher, _ = recording_batcher(window_s=2.0)
    started = time.monotonic()
    thread, outcome = submit_in_thread(batcher, "a", ("k",))
    thread.join(5)
    assert outcome["result"] == "a" and time.monotonic() - started < 0.5
    batcher.stop()


def test_requests_waiting_behind_a_busy_gpu_are_batched_by_key_and_size() -> None:
    hold = threading.Event()
    batcher, batches = recording_batcher(window_s=0.05, max_images=3, hold=hold)
    first = submit_in_thread(batcher, "busy", ("k",))
    time.sleep(0.1)  # the GPU is now busy with "busy"
    others = [
        submit_in_thread(batcher, name, key, images=images)
        for name, key, images in [("a", ("k",), 1), ("x", ("other",), 1), ("b", ("k",), 2), ("c", ("k",), 1)]
    ]
    time.sleep(0.1)
    hold.set()
    for thread, _ in [first, *others]:
        thread.join(5)
    assert batches[0] == ["busy"]
    assert batches[1] == ["a", "b"]  # same key, 3 images fill the batch; "c" waits for the next
    assert sorted(map(tuple, batches[2:])) == [("c",), ("x",)]
    batcher.stop()


def test_cancelled_while_queued_never_runs() -> None:
    hold = threading.Event()
    batcher, batches = recording_batcher(window_s=0.0, hold=hold)
    busy = submit_in_thread(batcher, "busy", ("k",))
    time.sleep(0.05)
    reporter = Reporter()
    waiting, outcome = submit_in_thread(batcher, "late", ("k",), reporter)
    time.sleep(0.05)
    reporter.cancel_event.set()
    waiting.join(5)
    assert isinstance(outcome.get("error"), Cancelled)
    hold.set()
    busy[0].join(5)
    time.sleep(0.05)
    assert batches == [["busy"]]
    batcher.stop()


@pytest.mark.parametrize("window", [0.0, 0.02])
def test_disabled_batching_runs_one_request_per_pass(window: float) -> None:
    hold = threading.Event()
    batcher, batches = recording_batcher(window_s=window, hold=hold)
    threads = [submit_in_thread(batcher, "0", ("k",))[0]]
    time.sleep(0.05)  # "0" is on the GPU; the next two queue behind it
    threads += [submit_in_thread(batcher, str(i), ("k",))[0] for i in (1, 2)]
    time.sleep(0.1)
    hold.set()
    for thread in threads:
        thread.join(5)
    sizes = [len(b) for b in batches]
    assert sizes == ([1, 1, 1] if window == 0.0 else [1, 2])
    batcher.stop()


def test_members_coming_back_one_after_another_meet_in_one_pass() -> None:
    """Under load the window restarts with each arrival: three requests 60 ms apart (120 ms in
    all, past one 100 ms window) share a pass; a gap longer than the window closes it."""
    batcher, batches = recording_batcher(window_s=0.1)
    batcher.last_batch_size = 3  # as after a shared pass: the batcher expects company
    threads = []
    for name, gap in (("a", 0.0), ("b", 0.06), ("c", 0.06), ("late", 0.3)):
        time.sleep(gap)
        threads.append(submit_in_thread(batcher, name, ("k",))[0])
    for thread in threads:
        thread.join(5)
    assert batches == [["a", "b", "c"], ["late"]]
    batcher.stop()
