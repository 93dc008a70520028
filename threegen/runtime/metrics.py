"""Prometheus metrics shared by every service (the `service` label tells them apart)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPCS = Counter("threegen_rpcs_total", "RPCs finished", ["service", "method", "code"])
RPC_SECONDS = Histogram(
    "threegen_rpc_seconds",
    "RPC duration",
    ["service", "method"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
IN_FLIGHT = Gauge("threegen_requests_running", "Requests holding a worker slot", ["service"])
QUEUED = Gauge("threegen_requests_queued", "Requests waiting for a worker slot", ["service"])
REJECTED = Counter(
    "threegen_requests_rejected_total", "Requests refused because the queue was full", ["service"]
)
CANCELLED_WORK = Counter(
    "threegen_work_cancelled_total", "Engine runs stopped early because the caller left", ["service"]
)
STEPS = Counter("threegen_engine_steps_total", "Progress steps completed by engines", ["service"])
BATCH_REQUESTS = Histogram(
    "threegen_batch_requests",
    "Requests that shared one forward pass (dynamic batching)",
    ["service"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
MODEL_READY = Gauge("threegen_model_ready", "1 once the service's models are loaded", ["service"])


def observe_rpc(service: str, method: str, code: str, seconds: float) -> None:
    RPCS.labels(service, method, code).inc()
    RPC_SECONDS.labels(service, method).observe(seconds)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=host)
