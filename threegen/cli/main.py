"""The `threegen` command: run the local stack, generate assets with progress bars, inspect models."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)

STAGE_LABELS = {2: "text -> image", 3: "image -> 3D", 4: "render + export"}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "threegen"


# ---- stack ----------------------------------------------------------------------------


def _start_stack(args: argparse.Namespace, ports: dict[str, int] | None = None):
    from threegen import stack

    environment: dict[str, str] = {"LOG_FORMAT": "plain"}
    if args.tiny:
        from threegen.tiny import default_root, ensure_tiny_weights, tiny_environment

        with console.status(
            f"writing tiny random-weight checkpoints under {default_root()} (first use only)"
        ):
            environment.update(tiny_environment(ensure_tiny_weights()))
    log_dir = Path(args.log_dir) if args.log_dir else _cache_dir() / "logs"
    with console.status("starting imagegen, recon, render and gateway (loading models)") as status:
        started = time.monotonic()

        def ready(name: str) -> None:
            console.print(f"  [green]ready[/] {name} ({time.monotonic() - started:.1f} s)")
            status.update(f"waiting for the rest ({name} ready)")

        running = stack.start(
            host=args.host, ports=ports, environment=environment, log_dir=log_dir, on_ready=ready
        )
    return running


def cmd_up(args: argparse.Namespace) -> int:
    ports = {"gateway": args.port} if args.port else None
    running = _start_stack(args, ports)
    table = Table(title="threegen is up")
    table.add_column("service")
    table.add_column("address")
    table.add_column("log")
    for name in ("gateway", "imagegen", "recon", "render"):
        table.add_row(name, running.address(name), str(running.log_dir / f"{name}.log"))
    console.print(table)
    console.print(f'try: [bold]threegen generate "a wooden chair" -o out/ --address {running.gateway}[/]')
    console.print("Ctrl-C stops the stack.")
    stop = {"flag": False}

    def handle(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    try:
        while not stop["flag"]:
            for name, process in running.processes.items():
                if process.poll() is not None:
                    console.print(f"[red]{name} exited ({process.returncode})[/]\n{running.log_tail(name)}")
                    stop["flag"] = True
            time.sleep(0.5)
    finally:
        console.print("stopping (draining in-flight requests)")
        running.stop()
    return 0


# ---- generate ---------------------------------------------------------------------------


def build_request(args: argparse.Namespace):
    from threegen.common.v1 import common_pb2
    from threegen.gateway.v1 import gateway_pb2
    from threegen.imagegen.v1 import imagegen_pb2
    from threegen.recon.v1 import recon_pb2
    from threegen.render.v1 import render_pb2

    request = gateway_pb2.GenerateRequest(prompt=args.prompt or "")
    if args.image:
        request.image = Path(args.image).read_bytes()
    if args.seed is not None:
        request.seed = args.seed
    request.image_options.CopyFrom(
        imagegen_pb2.ImageOptions(
            steps=args.steps or 0,
            model=imagegen_pb2.IMAGE_MODEL_SDXL_TURBO if args.sdxl else imagegen_pb2.IMAGE_MODEL_UNSPECIFIED,
            width=args.image_size or 0,
            height=args.image_size or 0,
        )
    )
    family = getattr(common_pb2, f"FAMILY_{args.family.upper()}") if args.family else 0
    recon = recon_pb2.ReconOptions(family=family)
    if args.mc_resolution or args.foreground_ratio:
        recon.triposr.CopyFrom(
            recon_pb2.TripoSROptions(
                mc_resolution=args.mc_resolution or 0, foreground_ratio=args.foreground_ratio or 0.0
            )
        )
    request.recon_options.CopyFrom(recon)
    formats = [f.strip().upper() for f in args.formats.split(",") if f.strip()]
    outputs = render_pb2.RenderOptions(exports=[getattr(render_pb2, f"MESH_FORMAT_{f}") for f in formats])
    if not args.no_preview:
        outputs.preview.CopyFrom(
            render_pb2.PreviewOptions(
                seconds=args.preview_seconds, fps=args.fps, resolution=args.preview_size
            )
        )
    if args.thumbnail:
        outputs.thumbnail.CopyFrom(render_pb2.ThumbnailOptions(resolution=args.preview_size))
    request.outputs.CopyFrom(outputs)
    return request


def run_generate(args: argparse.Namespace, address: str) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from threegen import client
    from threegen.common.v1 import common_pb2
    from threegen.errors import field_violations

    request = build_request(args)
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=args.json, transient=False) as bars:
        overall = bars.add_task("overall", total=1.0, detail="")
        tasks: dict[int, int] = {}

        def on_progress(event: common_pb2.Progress) -> None:
            bars.update(overall, completed=event.overall_fraction)
            if event.stage == common_pb2.STAGE_QUEUED:
                bars.update(overall, detail=f"queued, position {event.queue_position}")
                return
            label = STAGE_LABELS.get(event.stage, common_pb2.Stage.Name(event.stage))
            if event.stage not in tasks:
                tasks[event.stage] = bars.add_task(label, total=1.0, detail="")
            bars.update(tasks[event.stage], completed=event.fraction, detail=event.message or event.step)

        try:
            outcome = client.generate(address, request, on_progress=on_progress, timeout=args.timeout)
        except grpc.RpcError as error:
            bars.stop()
            console.print(f"[red]{error.code().name}[/]: {error.details()}")
            for field_path, description in field_violations(error):
                console.print(f"  {field_path}: {description}")
            return 2
        for task in tasks.values():
            bars.update(task, completed=1.0)
    written = outcome.save(Path(args.output))
    if args.json:
        print(
            json.dumps(
                {"result": MessageToDict(outcome.result), "files": [str(p) for p in written]}, indent=2
            )
        )
        return 0
    result = outcome.result
    console.print(
        f"seed {result.seed}, {result.stats.vertex_count} vertices, {result.stats.face_count} faces, "
        f"{result.total_seconds:.2f} s"
    )
    for path in written:
        console.print(f"  wrote {path} ({path.stat().st_size} bytes)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt and not args.image:
        console.print("[red]give a prompt or --image[/]")
        return 2
    return run_generate(args, args.address)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a private stack on free ports, run one generate, stop the stack."""
    from threegen.stack import free_port

    args.tiny = True
    ports = {name: free_port(args.host) for name in ("gateway", "imagegen", "recon", "render")}
    if args.log_dir is None:
        args.log_dir = tempfile.mkdtemp(prefix="threegen-logs-")
    running = _start_stack(args, ports)
    try:
        return run_generate(args, running.gateway)
    finally:
        running.stop()


def cmd_models(args: argparse.Namespace) -> int:
    from threegen import client
    from threegen.common.v1 import common_pb2
    from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    with client.channel(args.address) as ch:
        reply = gateway_pb2_grpc.GatewayServiceStub(ch).ListModels(
            gateway_pb2.ListModelsRequest(), timeout=10
        )
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(reply), indent=2))
        return 0
    table = Table()
    for column in ("service", "model", "state", "device", "memory", "source"):
        table.add_column(column)
    for m in reply.models:
        state = common_pb2.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower()
        table.add_row(
            m.service,
            m.name,
            state + (f" ({m.error})" if m.error else ""),
            m.device,
            f"{m.memory_bytes / 2**20:.0f} MiB",
            m.source,
        )
    console.print(table)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from threegen.settings_table import markdown, update_readme

    if args.readme:
        update_readme(Path(args.readme))
        console.print(f"updated the configuration table in {args.readme}")
    else:
        print(markdown())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threegen", description="Text or image -> 3D assets over gRPC.")
    sub = p.add_subparsers(dest="command", required=True)

    def stack_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--host", default="127.0.0.1", help="address every service binds")
        q.add_argument("--log-dir", default=None, help="where service logs go")

    def generate_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("-o", "--output", default="out", help="folder for the artifacts")
        q.add_argument("--image", help="input image (skips text -> image)")
        q.add_argument("--seed", type=int)
        q.add_argument("--steps", type=int, help="diffusion steps (1-4)")
        q.add_argument("--sdxl", action="store_true", help="use SDXL-Turbo")
        q.add_argument("--image-size", type=int, help="generated image size (multiple of 64)")
        q.add_argument("--family", help="recon family, e.g. triposr")
        q.add_argument("--mc-resolution", type=int, help="TripoSR marching-cubes resolution (32-512)")
        q.add_argument("--foreground-ratio", type=float, help="TripoSR foreground ratio (0.5-1)")
        q.add_argument("--formats", default="glb,ply", help="exports: glb,ply,stl")
        q.add_argument("--no-preview", action="store_true", help="skip the turntable MP4")
        q.add_argument("--preview-seconds", type=float, default=3.0)
        q.add_argument("--fps", type=int, default=16)
        q.add_argument("--preview-size", type=int, default=512)
        q.add_argument("--thumbnail", action="store_true", help="also a PNG thumbnail")
        q.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
        q.add_argument("--json", action="store_true", help="print the result as JSON, no progress bars")

    up = sub.add_parser("up", help="run imagegen, recon, render and the gateway locally")
    stack_options(up)
    up.add_argument(
        "--tiny", action="store_true", help="use tiny random-weight checkpoints (written on first use)"
    )
    up.add_argument("--port", type=int, default=0, help="gateway port (default 50051)")
    up.set_defaults(func=cmd_up)

    gen = sub.add_parser("generate", help="text or image -> 3D asset + preview, with progress bars")
    gen.add_argument("prompt", nargs="?", default="")
    gen.add_argument("--address", default=os.environ.get("THREEGEN_ADDRESS", "localhost:50051"))
    generate_options(gen)
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="start a local stack with tiny checkpoints, generate once, stop")
    demo.add_argument("prompt")
    stack_options(demo)
    generate_options(demo)
    demo.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list models of every service")
    models.add_argument("--address", default=os.environ.get("THREEGEN_ADDRESS", "localhost:50051"))
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    config = sub.add_parser("config", help="print the configuration table (markdown)")
    config.add_argument("--readme", metavar="PATH", help="rewrite the table inside this README instead")
    config.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a readable line, not a traceback, for expected failures
        from threegen.stack import StackError

        if isinstance(exc, StackError):
            console.print(f"[red]stack failed:[/] {exc}")
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
