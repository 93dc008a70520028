"""The `threegen` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import pytest
import trimesh


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "threegen.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


SMALL = [
    "--image-size",
    "64",
    "--mc-resolution",
    "40",
    "--preview-seconds",
    "1",
    "--fps",
    "6",
    "--preview-size",
    "64",
    "--seed",
    "3",
]


def test_generate_writes_files_and_json(stack, tmp_path) -> None:
    done = run_cli(
        "generate",
        "a chair",
        "-o",
        str(tmp_path),
        "--address",
        stack.gateway.address,
        "--formats",
        "glb,stl",
        "--thumbnail",
        "--json",
        *SMALL,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["result"]["seed"] == 3
    names = sorted(p.rsplit("/", 1)[-1] for p in report["files"])
    assert names == ["image.png", "mesh.glb", "mesh.stl", "preview.mp4", "thumbnail.png"]
    assert len(trimesh.load(tmp_path / "mesh.stl").faces) > 0
    with av.open(str(tmp_path / "preview.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 6


def test_generate_shows_field_errors(stack, tmp_path) -> None:
    done = run_cli(
        "generate", "a chair", "-o", str(tmp_path), "--address", stack.gateway.address, "--steps", "12"
    )
    assert done.returncode == 2
    assert "INVALID_ARGUMENT" in done.stderr and "image_options.steps" in done.stderr


@pytest.mark.slow
def test_demo_starts_a_stack_generates_and_stops(tiny, tmp_path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "demo",
        "a wooden chair",
        "-o",
        str(out),
        *SMALL,
        env={"THREEGEN_TINY_DIR": str(tiny["triposr"].parent), "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["image.png", "mesh.glb", "mesh.ply", "preview.mp4"]
    assert len(trimesh.load(out / "mesh.glb", force="mesh").faces) > 0
    assert "ready gateway" in done.stderr


def test_job_commands(stack, tmp_path) -> None:
    address = ["--address", stack.gateway.address]
    submitted = run_cli("submit", "a lamp", *address, "--json", *SMALL)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    watched = run_cli("watch", job_id, *address, "-o", str(tmp_path / "job"), "--json")
    assert watched.returncode == 0, watched.stderr
    report = json.loads(watched.stdout)
    assert report["job"]["status"] == "JOB_STATUS_SUCCEEDED"
    assert sorted(p.rsplit("/", 1)[-1] for p in report["files"]) == [
        "image.png",
        "mesh.glb",
        "mesh.ply",
        "preview.mp4",
    ]
    status = json.loads(run_cli("status", job_id, *address, "--json").stdout)
    assert status["result"]["seed"] == 3
    listed = json.loads(run_cli("jobs", *address, "--json", "--status", "succeeded").stdout)
    assert job_id in {j["id"] for j in listed["jobs"]}
    one = run_cli("download", job_id, "mesh.glb", *address, "-o", str(tmp_path / "one"))
    assert one.returncode == 0 and sorted(p.name for p in (tmp_path / "one").iterdir()) == ["mesh.glb"]
    image = tmp_path / "job" / "image.png"
    uploaded = json.loads(run_cli("upload", str(image), *address, "--json").stdout)
    assert len(uploaded["inputId"]) == 64
    missing = run_cli("status", "no-such-job", *address)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
