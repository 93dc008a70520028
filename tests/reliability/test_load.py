"""Load: 200 concurrent clients on a gateway with small queues.

Every call must end with OK or RESOURCE_EXHAUSTED within its deadline, and the gateway's
memory must stay flat from one wave of clients to the next. Figures print with `pytest -s`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import grpc

from tests.reliability.processes import gateway_process
from tests.test_end_to_end import small_request
from threegen.gateway.v1 import gateway_pb2_grpc

CLIENTS = 200
WAVES = 3
DEADLINE_S = 120.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_client(address: str, seed: int) -> tuple[grpc.StatusCode, float, int]:
    """One client with its own channel; returns its final code, seconds taken and bytes received."""
    started = time.monotonic()
    received = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        call = stub.Generate(small_request(seed=seed), timeout=DEADLINE_S)
        try:
            async for response in call:
                if response.WhichOneof("event") == "chunk":
                    received += len(response.chunk.data)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
    return code, time.monotonic() - started, received


async def wave(address: str, first_seed: int) -> list[tuple[grpc.StatusCode, float, int]]:
    return await asyncio.gather(*(one_client(address, first_seed + i) for i in range(CLIENTS)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_200_concurrent_clients_get_ok_or_resource_exhausted_and_memory_stays_flat(stack, tmp_path) -> None:
    gateway = gateway_process(stack, tmp_path, max_concurrent="2", max_queued="4").start()
    try:
        pid = gateway.process.pid
        rss = [rss_mib(pid)]
        outcomes = []
        for number in range(WAVES):
            started = time.monotonic()
            results = asyncio.run(wave(gateway.address, first_seed=1000 * (number + 1)))
            wall = time.monotonic() - started
            outcomes.extend(results)
            rss.append(rss_mib(pid))
            ok = [r for r in results if r[0] == grpc.StatusCode.OK]
            print(
                f"\nwave {number + 1}: {CLIENTS} clients in {wall:.1f} s, ok {len(ok)}, "
                f"rejected {CLIENTS - len(ok)}, gateway RSS {rss[-1]:.0f} MiB"
            )

        codes = {code for code, _, _ in outcomes}
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        ok = [seconds for code, seconds, _ in outcomes if code == grpc.StatusCode.OK]
        rejected = [seconds for code, seconds, _ in outcomes if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        # 2 running + 4 queued are admitted at once; the rest must be turned away, not parked.
        assert len(ok) >= 6 * WAVES and rejected
        assert all(received > 0 for code, _, received in outcomes if code == grpc.StatusCode.OK)
        assert max(rejected) < 10.0, "a rejection must come at once, not after waiting for capacity"
        # Memory: the first wave pays for lazily built state (channels, caches); after that, flat.
        assert rss[-1] - rss[1] < 64, f"gateway RSS grew {rss[1]:.0f} -> {rss[-1]:.0f} MiB"

        total = len(outcomes)

        def ms(values: list[float], q: float) -> str:
            return f"{percentile(values, q) * 1000:.0f} ms"

        print(
            f"load: {total} calls, ok {len(ok)} ({len(ok) / total:.1%}), "
            f"RESOURCE_EXHAUSTED {len(rejected)} ({len(rejected) / total:.1%})\n"
            f"  ok latency        p50 {ms(ok, 0.5)}  p99 {ms(ok, 0.99)}\n"
            f"  rejection latency p50 {ms(rejected, 0.5)}  p99 {ms(rejected, 0.99)}  "
            f"mean {statistics.mean(rejected) * 1000:.0f} ms\n"
            f"  gateway RSS MiB: start {rss[0]:.0f}, after waves {', '.join(f'{v:.0f}' for v in rss[1:])}"
        )
    finally:
        gateway.stop()
