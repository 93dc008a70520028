"""Run the whole stack on one machine: the three services and the gateway as local processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# name, module started with `python -m`, env prefix, default port
SERVICES = (
    ("imagegen", "services.imagegen", "THREEGEN_IMAGEGEN_", 50052),
    ("recon", "services.recon", "THREEGEN_RECON_", 50053),
    ("render", "services.render", "THREEGEN_RENDER_", 50054),
    ("gateway", "gateway", "THREEGEN_GATEWAY_", 50051),
)


class StackError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    host: str
    ports: dict[str, int]
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"{self.host}:{self.ports['gateway']}"

    def address(self, name: str) -> str:
        return f"{self.host}:{self.ports[name]}"

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process (they drain), then SIGKILL what is left after `grace`."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def start(
    *,
    host: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
    environment: dict[str, str] | None = None,
    log_dir: Path,
    ready_timeout: float = 300.0,
    on_ready: Callable[[str], None] | None = None,
) -> Stack:
    """Start every service, wait until each reports SERVING; stop them all on failure."""
    ports = {name: (ports or {}).get(name, default) for name, _, _, default in SERVICES}
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(host, ports, log_dir)
    base = {**os.environ, **(environment or {})}
    base.setdefault("PYTHONUNBUFFERED", "1")
    for name, module, prefix, _ in SERVICES:
        env = dict(base)
        env[f"{prefix}HOST"] = host
        env[f"{prefix}PORT"] = str(ports[name])
        if name == "gateway":
            for backend in ("imagegen", "recon", "render"):
                env[f"THREEGEN_GATEWAY_{backend.upper()}_ADDRESS"] = stack.address(backend)
        log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        stack.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
    pending = {name for name, *_ in SERVICES}
    deadline = time.monotonic() + ready_timeout
    try:
        while pending:
            for name in sorted(pending):
                process = stack.processes[name]
                if process.poll() is not None:
                    raise StackError(f"{name} exited with code {process.returncode}:\n{stack.log_tail(name)}")
                if _serving(stack.address(name)):
                    pending.discard(name)
                    if on_ready is not None:
                        on_ready(name)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{stack.log_tail(n)}" for n in sorted(pending))
                raise StackError(
                    f"not ready after {ready_timeout:.0f} s: {', '.join(sorted(pending))}\n{tails}"
                )
            time.sleep(0.2)
    except BaseException:
        stack.stop(grace=5.0)
        raise
    return stack
