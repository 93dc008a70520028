"""Rust (prost) decodes what the Python stubs encode: the contracts agree on the wire."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("cargo") is None or not Path("/usr/share/cargo/registry").is_dir(),
    reason="cargo and Debian's vendored crates (librust-prost-*-dev) needed",
)


def test_rust_decodes_a_python_encoded_result(tmp_path) -> None:
    response = gateway_pb2.GenerateResponse(
        result=gateway_pb2.GenerateResult(
            seed=4242,
            stats=common_pb2.GeometryStats(kind=common_pb2.GEOMETRY_KIND_MESH, face_count=1234),
            artifacts=[common_pb2.ArtifactInfo(name="mesh.glb", sha256="ab" * 32)],
            timings=[common_pb2.Timing(stage=common_pb2.STAGE_RENDER, step="frames", seconds=0.25)],
            cached=True,
        )
    )
    sample = tmp_path / "result.bin"
    sample.write_bytes(response.SerializeToString())
    run = subprocess.run(
        ["bash", str(ROOT / "scripts/rust_check.sh"), "--", "--nocapture"],
        env={**os.environ, "THREEGEN_WIRE_SAMPLE": str(sample)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "THREEGEN_WIRE_SAMPLE not set" not in run.stdout + run.stderr
