"""The shared runtime under real gRPC: admission, cancellation, deadlines, health, drain, ids, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from tests.conftest import recon_service
from tests.helpers import png_bytes, recon_requests, triposr
from tests.servers import ServerThread, serving
from threegen.common.v1 import common_pb2
from threegen.errors import ResourceExhausted
from threegen.logs import REQUEST_ID, JsonFormatter
from threegen.recon.v1 import recon_pb2_grpc
from threegen.runtime import metrics
from threegen.runtime.admission import Admission
from threegen.runtime.interceptors import _as_service_error
from threegen.stack import free_port

SLOW = 512  # a 512^3 density grid keeps a CPU busy for many seconds


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# ---- admission, in isolation -----------------------------------------------------------


def test_admission_positions_and_refusal() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrent=1, max_queued=2)
        first = admission.enter()
        second, third = admission.enter(), admission.enter()
        assert (first.position, second.position, third.position) == (0, 1, 2)
        with pytest.raises(ResourceExhausted, match="max_queued=2"):
            admission.enter()
        seen: list[int] = []

        async def waiter() -> None:
            async for position in third.wait():
                seen.append(position)

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        second.release()  # a waiter ahead leaves: third moves up
        await asyncio.sleep(0.01)
        first.release()  # the runner finishes: third runs
        await asyncio.wait_for(task, 1)
        assert seen == [2, 1]
        assert third.running and admission.running == 1 and admission.queued == 0

    asyncio.run(scenario())


# ---- over gRPC ------------------------------------------------------------------------


@pytest.fixture()
def busy_recon(tiny):
    with serving(recon_service(tiny, max_concurrent=1, max_queued=1)) as server:
        yield server


def first_progress(call) -> common_pb2.Progress:
    for response in call:
        if response.WhichOneof("event") == "progress" and response.progress.stage != common_pb2.STAGE_QUEUED:
            return response.progress
    raise AssertionError("no progress")


def test_queue_position_then_resource_exhausted_then_cancel_frees_the_slot(busy_recon: ServerThread) -> None:
    image = png_bytes()
    cancelled_before = metric("threegen_work_cancelled_total", service="recon") or 0.0
    with busy_recon.channel() as channel:
        stub = recon_pb2_grpc.ReconServiceStub(channel)
        running = stub.Reconstruct(recon_requests(image, triposr(SLOW)), timeout=120)
        first_progress(running)  # the slow one holds the only slot
        queued = stub.Reconstruct(recon_requests(image, triposr(32)), timeout=120)
        queued_event = next(iter(queued))
        assert queued_event.progress.stage == common_pb2.STAGE_QUEUED
        assert queued_event.progress.queue_position == 1

        refused = stub.Reconstruct(recon_requests(image, triposr(32)), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(refused)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued=1" in caught.value.details()

        started = time.monotonic()
        running.cancel()
        # The queued call gets the slot only once the cancelled work has really stopped.
        responses = list(queued)
        assert responses[-1].WhichOneof("event") == "result"
        assert time.monotonic() - started < 15
    assert wait_for(lambda: busy_recon.runtime.admission.running == 0)
    cancelled_after = metric("threegen_work_cancelled_total", service="recon")
    assert cancelled_after == cancelled_before + 1


def test_deadline_stops_the_work(busy_recon: ServerThread) -> None:
    with busy_recon.channel() as channel:
        stub = recon_pb2_grpc.ReconServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Reconstruct(recon_requests(png_bytes(), triposr(SLOW)), timeout=1.5))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5
    # The server noticed and stopped its work instead of finishing the grid for nobody.
    assert wait_for(lambda: busy_recon.runtime.admission.running == 0, timeout=5)


def test_health_not_serving_until_loaded_and_unavailable_meanwhile(tiny) -> None:
    gate = threading.Event()
    service = recon_service(tiny)
    real_load = service.load

    def slow_load(runtime) -> None:
        gate.wait(30)
        real_load(runtime)

    service.load = slow_load
    with serving(service, wait_ready=False) as server, server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(
                recon_pb2_grpc.ReconServiceStub(channel).Reconstruct(recon_requests(png_bytes()), timeout=10)
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "still loading" in caught.value.details()
        gate.set()
        assert wait_for(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        )


def test_failed_load_is_reported_not_crashed(tiny, tmp_path) -> None:
    with (
        serving(recon_service(tiny, triposr_model=str(tmp_path / "missing"))) as server,
        server.channel() as ch,
    ):
        stub = recon_pb2_grpc.ReconServiceStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Reconstruct(recon_requests(png_bytes()), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "does not exist" in caught.value.details()
        from threegen.recon.v1 import recon_pb2

        models = stub.ListModels(recon_pb2.ListModelsRequest(), timeout=5).models
        assert models[0].state == common_pb2.MODEL_STATE_ERROR and "missing" in models[0].error
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_drain_finishes_in_flight_and_refuses_new(tiny) -> None:
    server = ServerThread(recon_service(tiny)).start()
    try:
        with server.channel() as channel:
            stub = recon_pb2_grpc.ReconServiceStub(channel)
            in_flight = stub.Reconstruct(recon_requests(png_bytes(), triposr(160)), timeout=60)
            first_progress(in_flight)
            stopper = threading.Thread(target=server.call, args=(server.instance.stop(grace=30),))
            stopper.start()
            responses = list(in_flight)
            assert responses[-1].WhichOneof("event") == "result"
            stopper.join(30)
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Reconstruct(recon_requests(png_bytes(), triposr(32)), timeout=5))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)


def test_request_id_travels_through_every_hop(stack) -> None:
    from tests.test_end_to_end import small_request
    from threegen.gateway.v1 import gateway_pb2_grpc

    with grpc.insecure_channel(stack.gateway.address) as channel:
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Generate(
            small_request(), timeout=120, metadata=(("x-request-id", "req-abc-123"),)
        )
        responses = list(call)
        assert dict(call.initial_metadata())["x-request-id"] == "req-abc-123"
    assert responses[-1].result.request_id == "req-abc-123"


def test_unexpected_errors_become_internal_without_details_and_oom_is_overload() -> None:
    token = REQUEST_ID.set("rid-1")
    try:
        error = _as_service_error(KeyError("secret path /etc/x"))
        assert error.code == grpc.StatusCode.INTERNAL
        assert "secret" not in error.message and "rid-1" in error.message
        OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})
        assert (
            _as_service_error(OutOfMemoryError("CUDA out of memory")).code
            == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    finally:
        REQUEST_ID.reset(token)


def test_json_logs_carry_the_request_id() -> None:
    token = REQUEST_ID.set("rid-42")
    try:
        record = logging.LogRecord("threegen.rpc", logging.INFO, __file__, 1, "rpc %s", ("done",), None)
        record.method = "/x.Y/Z"
        line = json.loads(JsonFormatter("recon").format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "rid-42" and line["msg"] == "rpc done" and line["service"] == "recon"
    assert line["method"] == "/x.Y/Z" and line["level"] == "info"


def test_metrics_endpoint_counts_rpcs(stack) -> None:
    port = free_port()
    metrics.serve_metrics(port, "127.0.0.1")
    with stack.recon.channel() as channel:
        from threegen.recon.v1 import recon_pb2

        recon_pb2_grpc.ReconServiceStub(channel).ListModels(recon_pb2.ListModelsRequest(), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert (
        'threegen_rpcs_total{code="OK",method="/threegen.recon.v1.ReconService/ListModels",service="recon"}'
        in body
    )
    assert 'threegen_model_ready{service="recon"} 1.0' in body
