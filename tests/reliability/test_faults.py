"""Faults: a backend killed mid-stream, the gateway killed with jobs queued and running."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.conftest import gateway_service
from tests.reliability.processes import ServiceProcess, gateway_process
from tests.servers import serving
from tests.test_end_to_end import run_generate, small_request
from tests.test_gateway_jobs import slow_request, wait_status
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.stack import free_port


def recon_process(tiny, tmp_path) -> ServiceProcess:
    port = free_port()
    env = {
        "THREEGEN_RECON_PORT": str(port),
        "THREEGEN_RECON_HOST": "127.0.0.1",
        "THREEGEN_RECON_TRIPOSR_MODEL": str(tiny["triposr"]),
        "THREEGEN_RECON_LOG_FORMAT": "plain",
        "THREEGEN_RECON_REMBG_MODEL": str(tiny["rembg"] / "u2net-tiny.onnx"),
        "HF_HUB_OFFLINE": "1",
    }
    return ServiceProcess("services.recon", env, port, tmp_path / "recon.log")


def test_backend_killed_mid_stream_gives_unavailable_then_recovers(stack, tiny, tmp_path) -> None:
    recon = recon_process(tiny, tmp_path).start()
    try:
        with serving(gateway_service(stack.imagegen.address, recon.address, stack.render.address)) as gateway:
            with grpc.insecure_channel(gateway.address) as channel:
                call = gateway_pb2_grpc.GatewayServiceStub(channel).Generate(slow_request(21), timeout=120)
                for response in call:
                    if response.WhichOneof("event") == "progress" and response.progress.step == "query":
                        break  # recon is in the middle of its density grid
                recon.kill()
                killed = time.monotonic()
                with pytest.raises(grpc.RpcError) as caught:
                    list(call)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "recon" in caught.value.details()
                assert time.monotonic() - killed < 5.0

            with pytest.raises(grpc.RpcError) as caught:  # while it is down: a clear answer, no hang
                run_generate(gateway.address, small_request(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            recon.start()  # the same address comes back; the gateway reconnects by itself
            _, files, result = run_generate(gateway.address, small_request(), timeout=120)
            assert result.stats.face_count > 0 and "mesh.glb" in files
    finally:
        recon.stop()


def test_gateway_killed_with_jobs_queued_and_running_resumes_them(stack, tmp_path) -> None:
    gateway = gateway_process(stack, tmp_path, job_workers="1").start()
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            running = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=slow_request(22)), timeout=30).job
            queued = stub.SubmitJob(
                gateway_pb2.SubmitJobRequest(request=small_request(seed=23)), timeout=30
            ).job
            wait_status(stub, running.id, {gateway_pb2.JOB_STATUS_RUNNING})
        gateway.kill()  # no drain: the process is gone mid-job
        gateway.start()
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            for job_id in (running.id, queued.id):
                done = wait_status(
                    stub,
                    job_id,
                    {gateway_pb2.JOB_STATUS_SUCCEEDED, gateway_pb2.JOB_STATUS_FAILED},
                    timeout=180,
                )
                assert done.status == gateway_pb2.JOB_STATUS_SUCCEEDED, done.error_message
                assert done.result.stats.face_count > 0
    finally:
        gateway.stop()
