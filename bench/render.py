"""render: ms per frame at 512 and 1024, H.264 encode time, and a 3 s, 16 fps, 512 px turntable
of a 100k-face mesh end to end, in-process and through the render gRPC service.

The GL platform is chosen as the service does (EGL with a GPU, OSMesa without); set
PYOPENGL_PLATFORM to force one.

    python -m bench.render --out /tmp/bench [--faces 100000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import service_process, summary, table, timed
from services.render.gl import choose_platform

PORT = 50154


def test_mesh(faces: int):
    import trimesh

    count = max(8, round((faces / 4) ** 0.5))  # a uv sphere has about 4 * count^2 faces
    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[count, count])
    rng = np.random.default_rng(0)
    mesh.vertices *= 1.0 + 0.05 * rng.standard_normal((len(mesh.vertices), 1))
    mesh.visual.vertex_colors = (rng.random((len(mesh.vertices), 4)) * 255).astype(np.uint8)
    return mesh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="bench-render-"))
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    platform = choose_platform("auto")

    from services.render.engine import RenderEngine, Renderer, RenderJob, Stage
    from services.render.params import PreviewParams, RenderPlan
    from threegen.chunks import Artifact, iter_chunks
    from threegen.geometry import export_mesh
    from threegen.render.v1 import render_pb2, render_pb2_grpc
    from threegen.runtime.work import Reporter

    mesh = test_mesh(args.faces)
    glb = export_mesh(mesh, "glb")
    renderer = Renderer()
    stage = Stage(mesh, (1.0, 1.0, 1.0), 20.0)
    report: dict = {"platform": platform, "faces": len(mesh.faces), "date": time.strftime("%Y-%m-%d")}
    from services.render.geometry import load_geometry

    report["load_glb"] = summary(timed(lambda: load_geometry(glb, "mesh.glb"), 10, warmup=1))
    report["scene_setup"] = summary(timed(lambda: Stage(mesh, (1.0, 1.0, 1.0), 20.0), 5, warmup=1))
    # pyrender's own read-back (colour and depth) against ours (colour only), same frames.
    import pyrender

    stock = pyrender.OffscreenRenderer(512, 512)
    stock_stage = Stage(mesh, (1.0, 1.0, 1.0), 20.0)  # a pyrender mesh binds to one GL context
    angles = iter(np.linspace(0, 2 * np.pi, 1000))

    def stock_frame() -> None:
        stock_stage.turn(next(angles))
        stock.render(stock_stage.scene)

    report["frame_512_stock_readback"] = summary(timed(stock_frame, 40, warmup=5))
    stage.turn(1.0)
    stock_stage.turn(1.0)
    ours = renderer.draw(stage, 512)
    report["readback_identical"] = bool(np.array_equal(ours, stock.render(stock_stage.scene)[0][..., :3]))
    for size in (512, 1024):
        angles = iter(np.linspace(0, 2 * np.pi, 1000))

        def frame(size: int = size, angles=angles) -> None:
            stage.turn(next(angles))
            renderer.draw(stage, size)

        report[f"frame_{size}"] = summary(timed(frame, 40, warmup=5))
    frames = [renderer.draw(stage, 512) for _ in range(48)]

    def encode(options: dict[str, str]) -> int:
        import av

        path = out / "encode.mp4"
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=16)
            stream.width = stream.height = 512
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "23", **options}
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.stat().st_size

    variants = {
        "veryfast": {"preset": "veryfast"},
        "veryfast_zerolatency": {"preset": "veryfast", "tune": "zerolatency"},
        "ultrafast": {"preset": "ultrafast"},
    }
    for label, options in variants.items():
        report[f"encode_48x512_{label}"] = summary(timed(lambda o=options: encode(o), 5, warmup=1))
        report[f"encode_48x512_{label}_bytes"] = encode(options)
    report["encode_48x512"] = report["encode_48x512_veryfast"]
    engine = RenderEngine()
    job = RenderJob(glb, RenderPlan(preview=PreviewParams(seconds=3.0, fps=16, resolution=512)), "mesh.glb")
    steps: dict[str, list[float]] = {}

    def turntable() -> None:
        for step, seconds in engine.run(job, Reporter()).timings:
            steps.setdefault(step, []).append(seconds * 1e3)

    report["turntable_in_process"] = summary(timed(turntable, args.repeat, warmup=2))
    report["turntable_steps_p50_ms"] = {step: float(np.median(v)) for step, v in steps.items()}

    def requests():
        options = render_pb2.RenderOptions(
            preview=render_pb2.PreviewOptions(seconds=3.0, fps=16, resolution=512)
        )
        yield render_pb2.RenderRequest(params=render_pb2.RenderParams(options=options))
        for chunk in iter_chunks(Artifact("mesh.glb", glb)):
            yield render_pb2.RenderRequest(geometry=chunk)

    env = {"THREEGEN_RENDER_PORT": str(PORT), "THREEGEN_RENDER_LOG_FORMAT": "plain"}
    with (
        service_process("services.render", env, PORT, out / "render.log") as address,
        grpc.insecure_channel(address) as channel,
    ):
        stub = render_pb2_grpc.RenderServiceStub(channel)

        def remote() -> None:
            for _ in stub.Render(requests(), timeout=120):
                pass

        report["turntable_grpc"] = summary(timed(remote, args.repeat, warmup=2))
    rows = [
        ["load GLB", report["load_glb"]["p50_ms"]],
        ["scene set-up", report["scene_setup"]["p50_ms"]],
        ["frame 512, pyrender's read-back (colour + depth)", report["frame_512_stock_readback"]["p50_ms"]],
        ["frame 512", report["frame_512"]["p50_ms"]],
        ["frame 1024", report["frame_1024"]["p50_ms"]],
        *[[f"encode 48 frames 512 (x264 {k})", report[f"encode_48x512_{k}"]["p50_ms"]] for k in variants],
        ["turntable 3 s 16 fps 512, in-process", report["turntable_in_process"]["p50_ms"]],
        ["turntable 3 s 16 fps 512, gRPC", report["turntable_grpc"]["p50_ms"]],
    ]
    print()
    print(f"platform {platform}, {report['faces']} faces, {report['date']}")
    print(table(rows, ["render", "p50 ms"]))
    print("turntable steps (p50 ms):", report["turntable_steps_p50_ms"])
    print("colour-only read-back identical to pyrender's:", report["readback_identical"])
    (out / "render.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
