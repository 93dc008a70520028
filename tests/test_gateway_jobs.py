"""The gateway as users drive it: async jobs that survive restarts, uploads, cache, auth, deadlines."""

from __future__ import annotations

import io
import time

import grpc
import pytest
import trimesh
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from tests.conftest import gateway_service
from tests.helpers import png_bytes
from tests.servers import ServerThread, serving
from tests.test_end_to_end import run_generate, small_request
from threegen.chunks import Artifact, ArtifactCollector, iter_chunks
from threegen.errors import field_violations
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.recon.v1 import recon_pb2

SLOW = 384  # marching-cubes resolution that keeps recon busy for seconds on a CPU


def slow_request(seed: int = 1) -> gateway_pb2.GenerateRequest:
    request = small_request()
    request.seed = seed
    request.recon_options.CopyFrom(
        recon_pb2.ReconOptions(triposr=recon_pb2.TripoSROptions(mc_resolution=SLOW))
    )
    return request


def gateway(stack, **overrides) -> ServerThread:
    return ServerThread(
        gateway_service(stack.imagegen.address, stack.recon.address, stack.render.address, **overrides)
    ).start()


def stub_for(server: ServerThread, channel: grpc.Channel | None = None):
    return gateway_pb2_grpc.GatewayServiceStub(channel or grpc.insecure_channel(server.address))


def wait_status(stub, job_id: str, statuses: set[int], timeout: float = 120.0) -> gateway_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        if job.status in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def download(stub, job_id: str, name: str) -> bytes:
    collector = ArtifactCollector()
    for response in stub.DownloadArtifact(
        gateway_pb2.DownloadArtifactRequest(job_id=job_id, name=name), timeout=30
    ):
        collector.add(response.chunk)
    collector.check_complete()
    return collector.finished[name].data


def test_submit_watch_download_list(stack) -> None:
    server = gateway(stack)
    try:
        stub = stub_for(server)
        job = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=small_request()), timeout=30).job
        assert job.id and job.status in (gateway_pb2.JOB_STATUS_QUEUED, gateway_pb2.JOB_STATUS_RUNNING)
        updates = [u.job for u in stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=job.id), timeout=120)]
        assert updates[-1].status == gateway_pb2.JOB_STATUS_SUCCEEDED
        fractions = [
            u.progress.overall_fraction for u in updates if u.status == gateway_pb2.JOB_STATUS_RUNNING
        ]
        assert fractions == sorted(fractions)
        done = stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.id), timeout=10).job
        assert done.finished_at.seconds >= done.created_at.seconds > 0
        names = {a.name: a for a in done.result.artifacts}
        assert {"image.png", "mesh.glb", "mesh.ply", "preview.mp4"} <= set(names)
        glb = download(stub, job.id, "mesh.glb")
        assert Artifact("mesh.glb", glb).sha256 == names["mesh.glb"].sha256
        assert len(trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh").faces) > 0
        listed = stub.ListJobs(gateway_pb2.ListJobsRequest(page_size=10), timeout=10).jobs
        assert job.id in {j.id for j in listed}
        with pytest.raises(grpc.RpcError) as caught:
            download(stub, job.id, "../jobs.sqlite3")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetJob(gateway_pb2.GetJobRequest(job_id="nope"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_queue_positions_full_queue_and_cancel(stack) -> None:
    cancelled_before = REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "recon"}) or 0.0
    server = gateway(stack, job_workers=1, max_queued_jobs=2)
    try:
        stub = stub_for(server)
        running = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=slow_request(1)), timeout=30).job
        wait_status(stub, running.id, {gateway_pb2.JOB_STATUS_RUNNING})
        second = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=slow_request(2)), timeout=30).job
        third = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=slow_request(3)), timeout=30).job
        assert (second.queue_position, third.queue_position) == (1, 2)
        with pytest.raises(grpc.RpcError) as caught:
            stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=slow_request(4)), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued_jobs=2" in caught.value.details()

        cancelled = stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=second.id), timeout=10).job
        assert cancelled.status == gateway_pb2.JOB_STATUS_CANCELLED
        assert stub.GetJob(gateway_pb2.GetJobRequest(job_id=third.id), timeout=10).job.queue_position == 1

        wait_status(stub, running.id, {gateway_pb2.JOB_STATUS_RUNNING})
        while (
            stub.GetJob(gateway_pb2.GetJobRequest(job_id=running.id)).job.progress.stage != 3
        ):  # reconstructing
            time.sleep(0.05)
        stopped = stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=running.id), timeout=60).job
        assert stopped.status == gateway_pb2.JOB_STATUS_CANCELLED
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and (REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "recon"}) or 0.0)
            <= cancelled_before
        ):
            time.sleep(0.05)
        assert (
            REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "recon"})
            > cancelled_before
        )
        stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=third.id), timeout=60)
    finally:
        server.stop()


def test_restart_keeps_queued_running_and_finished_jobs(stack, tmp_path) -> None:
    data = str(tmp_path / "jobs")
    first = gateway(stack, job_workers=1, data_dir=data)
    stub = stub_for(first)
    finished = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=small_request()), timeout=30).job
    wait_status(stub, finished.id, {gateway_pb2.JOB_STATUS_SUCCEEDED})
    running = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=slow_request(5)), timeout=30).job
    queued = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=small_request(seed=9)), timeout=30).job
    wait_status(stub, running.id, {gateway_pb2.JOB_STATUS_RUNNING})
    first.stop()  # the gateway goes away with one job running and one queued

    second = gateway(stack, job_workers=1, data_dir=data)
    try:
        stub = stub_for(second)
        for job_id in (running.id, queued.id):
            assert wait_status(stub, job_id, {gateway_pb2.JOB_STATUS_SUCCEEDED}, timeout=180)
        glb = download(stub, finished.id, "mesh.glb")
        assert len(trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh").faces) > 0
    finally:
        second.stop()


def test_same_seeded_request_is_served_from_the_cache(stack) -> None:
    server = gateway(stack)
    try:
        request = small_request()
        request.seed = 4242
        _, first_files, first = run_generate(server.address, request)
        _, second_files, second = run_generate(server.address, request)
        assert not first.cached and second.cached
        assert {n: f.sha256 for n, f in first_files.items()} == {n: f.sha256 for n, f in second_files.items()}
        stub = stub_for(server)
        job = stub.SubmitJob(gateway_pb2.SubmitJobRequest(request=request), timeout=30).job
        assert job.status == gateway_pb2.JOB_STATUS_SUCCEEDED and job.cached
        assert download(stub, job.id, "mesh.glb") == first_files["mesh.glb"].data
    finally:
        server.stop()


def test_uploaded_inputs_and_url_inputs(stack) -> None:
    server = gateway(stack)
    try:
        stub = stub_for(server)
        image = png_bytes(96, seed=3)
        upload = stub.UploadInput(
            (
                gateway_pb2.UploadInputRequest(chunk=c)
                for c in iter_chunks(Artifact("input.png", image), chunk_bytes=4096)
            ),
            timeout=30,
        )
        assert upload.size_bytes == len(image) and upload.input_id == Artifact("x", image).sha256
        request = small_request()
        request.prompt = ""
        request.image_input_id = upload.input_id
        _, files, result = run_generate(server.address, request)
        assert "image.png" not in files and result.stats.face_count > 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.UploadInput(
                iter(
                    [
                        gateway_pb2.UploadInputRequest(chunk=c)
                        for c in iter_chunks(Artifact("x.png", b"not an image"))
                    ]
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = small_request()
        bad.prompt = ""
        bad.image_input_id = "0" * 64
        with pytest.raises(grpc.RpcError) as caught:
            run_generate(server.address, bad)
        assert "image_input_id" in dict(field_violations(caught.value))
        url = small_request()
        url.image_url = "http://127.0.0.1:9/x.png"
        with pytest.raises(grpc.RpcError) as caught:
            run_generate(server.address, url)
        assert "disabled" in dict(field_violations(caught.value))["image_url"]
    finally:
        server.stop()
    open_gateway = gateway(stack, allow_image_urls=True)
    try:
        for target in (
            "http://127.0.0.1:9/x.png",
            "http://169.254.169.254/latest",
            "http://[::1]/x",
            "ftp://a/b",
        ):
            request = small_request()
            request.image_url = target
            with pytest.raises(grpc.RpcError) as caught:
                run_generate(open_gateway.address, request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, target
            assert "image_url" in dict(field_violations(caught.value))
    finally:
        open_gateway.stop()


def test_api_keys(stack) -> None:
    server = gateway(stack, api_keys=("s3cret", "other"))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=10, metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for metadata in ((("authorization", "Bearer s3cret"),), (("x-api-key", "other"),)):
                stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=10, metadata=metadata)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no key
    finally:
        server.stop()


def test_deadline_shorter_than_the_work_stops_the_backend(stack) -> None:
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(slow_request(11), timeout=2.5))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 6
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stack.recon.runtime.admission.running:
        time.sleep(0.05)
    assert stack.recon.runtime.admission.running == 0


def test_client_cancel_mid_stage_stops_the_backend(stack) -> None:
    before = REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "recon"}) or 0.0
    with grpc.insecure_channel(stack.gateway.address) as channel:
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Generate(slow_request(12), timeout=120)
        for response in call:
            if response.WhichOneof("event") == "progress" and response.progress.stage == 3:
                break
        call.cancel()
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and (REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "recon"}) or 0.0)
        <= before
    ):
        time.sleep(0.05)
    assert REGISTRY.get_sample_value("threegen_work_cancelled_total", {"service": "recon"}) == before + 1
    with serving(gateway_service(stack.imagegen.address, stack.recon.address, stack.render.address)) as fresh:
        assert run_generate(fresh.address, small_request())[2].stats.face_count > 0  # still serving
