"""Services as real processes, for tests that kill them (SIGKILL) and start them again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(self, module: str, env: dict[str, str], port: int, log: Path):
        self.module, self.env, self.port, self.log = module, env, port, log
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with grpc.insecure_channel(self.address) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.module} not serving:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no drain, no clean-up, as when a node or container dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def gateway_process(stack, data_dir: Path, **settings: str) -> ServiceProcess:
    """A gateway in its own process, in front of the in-test stack's backends, on a free port;
    `settings` are extra THREEGEN_GATEWAY_* values (name in lower case). Not started yet."""
    from threegen.stack import free_port

    port = free_port()
    env = {
        "THREEGEN_GATEWAY_PORT": str(port),
        "THREEGEN_GATEWAY_HOST": "127.0.0.1",
        "THREEGEN_GATEWAY_DATA_DIR": str(data_dir / "jobs"),
        "THREEGEN_GATEWAY_IMAGEGEN_ADDRESS": stack.imagegen.address,
        "THREEGEN_GATEWAY_RECON_ADDRESS": stack.recon.address,
        "THREEGEN_GATEWAY_RENDER_ADDRESS": stack.render.address,
        "THREEGEN_GATEWAY_LOG_FORMAT": "plain",
        **{f"THREEGEN_GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    return ServiceProcess("gateway", env, port, data_dir / "gateway.log")
