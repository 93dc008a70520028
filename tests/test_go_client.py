"""A Go client built from the generated stubs talks to a running gateway."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trimesh

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="Go toolchain not installed")


def test_go_client_generates_through_the_gateway(stack, tmp_path) -> None:
    built = subprocess.run(
        ["bash", str(ROOT / "scripts/go_check.sh")],
        capture_output=True,
        text=True,
        env={"GO_CHECK_DIR": str(tmp_path / "go"), "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    client = built.stdout.strip().splitlines()[-1]
    out = tmp_path / "out"
    run = subprocess.run(
        [
            client,
            "-address",
            stack.gateway.address,
            "-out",
            str(out),
            "-image-size",
            "64",
            "-mc-resolution",
            "40",
            "-preview-size",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "model recon/triposr MODEL_STATE_READY" in run.stdout
    assert "result seed=7" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["image.png", "mesh.glb", "preview.mp4"]
    assert len(trimesh.load(out / "mesh.glb", force="mesh").faces) > 0
