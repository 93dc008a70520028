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


KINDS = {
    "mesh": "GEOMETRY_KIND_MESH",
    "splat": "GEOMETRY_KIND_GAUSSIAN_SPLAT",
    "points": "GEOMETRY_KIND_POINT_CLOUD",
}


def build_request(args: argparse.Namespace):
    from threegen.common.v1 import common_pb2
    from threegen.gateway.v1 import gateway_pb2
    from threegen.imagegen.v1 import imagegen_pb2
    from threegen.recon.v1 import recon_pb2
    from threegen.render.v1 import render_pb2

    request = gateway_pb2.GenerateRequest(prompt=args.prompt or "", image_input_id=args.image_input_id)
    if args.image:
        request.image = Path(args.image).read_bytes()
    if args.mask:
        request.mask = Path(args.mask).read_bytes()
    if args.seed is not None:
        request.seed = args.seed
    loras = []
    for spec in args.lora:
        name, _, scale = spec.partition(":")
        loras.append(imagegen_pb2.LoraWeight(name=name, scale=float(scale) if scale else 0.0))
    request.image_options.CopyFrom(
        imagegen_pb2.ImageOptions(
            steps=args.steps or 0,
            model=imagegen_pb2.IMAGE_MODEL_SDXL_TURBO if args.sdxl else imagegen_pb2.IMAGE_MODEL_UNSPECIFIED,
            width=args.image_size or 0,
            height=args.image_size or 0,
            num_views=args.views or 0,
            top_k=1 if args.views else 0,
            loras=loras,
        )
    )
    recon = recon_pb2.ReconOptions(
        family=getattr(common_pb2, f"FAMILY_{args.family.upper()}") if args.family else 0,
        output=getattr(common_pb2, KINDS[args.output_kind]) if args.output_kind else 0,
    )
    if args.mc_resolution or args.foreground_ratio:
        recon.triposr.CopyFrom(
            recon_pb2.TripoSROptions(
                mc_resolution=args.mc_resolution or 0, foreground_ratio=args.foreground_ratio or 0.0
            )
        )
    request.recon_options.CopyFrom(recon)
    formats = [f.strip().upper() for f in args.formats.split(",") if f.strip()]
    outputs = render_pb2.RenderOptions(
        exports=[getattr(render_pb2, f"MESH_FORMAT_{f}", 0) for f in formats],
        texture_size_limit=args.texture_size or 0,
    )
    if not args.no_preview:
        outputs.preview.CopyFrom(
            render_pb2.PreviewOptions(
                seconds=args.preview_seconds, fps=args.fps, resolution=args.preview_size
            )
        )
    if args.thumbnail:
        outputs.thumbnail.CopyFrom(render_pb2.ThumbnailOptions(resolution=args.preview_size))
    if args.simplify is not None:
        outputs.simplify.CopyFrom(render_pb2.SimplifyOptions(ratio=args.simplify))
    request.outputs.CopyFrom(outputs)
    return request


class StageBars:
    """One progress bar for the whole request and one per stage, fed by Progress messages."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.overall = bars.add_task("overall", total=1.0, detail="")
        self.stages: dict[int, int] = {}

    def update(self, event) -> None:
        from threegen.common.v1 import common_pb2

        self.bars.update(self.overall, completed=event.overall_fraction)
        if event.stage == common_pb2.STAGE_QUEUED:
            self.bars.update(self.overall, detail=f"queued, position {event.queue_position}")
            return
        label = STAGE_LABELS.get(
            event.stage, common_pb2.Stage.Name(event.stage).removeprefix("STAGE_").lower()
        )
        if event.stage not in self.stages:
            self.stages[event.stage] = self.bars.add_task(label, total=1.0, detail="")
        self.bars.update(
            self.stages[event.stage], completed=event.fraction, detail=event.message or event.step
        )

    def finish(self) -> None:
        self.bars.update(self.overall, completed=1.0, detail="")
        for task in self.stages.values():
            self.bars.update(task, completed=1.0)


def progress_bars(disable: bool) -> Progress:
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console, disable=disable, transient=False)


def report_error(error) -> int:
    from threegen.errors import field_violations

    console.print(f"[red]{error.code().name}[/]: {error.details()}")
    for field_path, description in field_violations(error):
        console.print(f"  {field_path}: {description}")
    return 2


def connection(args: argparse.Namespace):
    from threegen.client import Connection

    return Connection(args.address, args.api_key, args.tls_ca, args.tls_cert, args.tls_key)


def print_json(message_or_dict) -> None:
    from google.protobuf.json_format import MessageToDict
    from google.protobuf.message import Message

    value = MessageToDict(message_or_dict) if isinstance(message_or_dict, Message) else message_or_dict
    print(json.dumps(value, indent=2))


def run_generate(args: argparse.Namespace, conn) -> int:
    import grpc

    from threegen import client

    request = build_request(args)
    with progress_bars(args.json) as bars:
        stages = StageBars(bars)
        try:
            outcome = client.generate(conn, request, on_progress=stages.update, timeout=args.timeout)
        except grpc.RpcError as error:
            bars.stop()
            return report_error(error)
        stages.finish()
    written = outcome.save(Path(args.output))
    if args.json:
        print_json({"result": json.loads(_to_json(outcome.result)), "files": [str(p) for p in written]})
        return 0
    result = outcome.result
    cached = " (from the cache)" if result.cached else ""
    console.print(
        f"seed {result.seed}, {result.stats.vertex_count} vertices, {result.stats.face_count} faces, "
        f"{result.total_seconds:.2f} s{cached}"
    )
    for path in written:
        console.print(f"  wrote {path} ({path.stat().st_size} bytes)")
    return 0


def _to_json(message) -> str:
    from google.protobuf.json_format import MessageToJson

    return MessageToJson(message)


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt and not args.image:
        console.print("[red]give a prompt or --image[/]")
        return 2
    return run_generate(args, connection(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a private stack on free ports, run one generate, stop the stack."""
    from threegen.client import Connection
    from threegen.stack import free_port

    args.tiny = True
    ports = {name: free_port(args.host) for name in ("gateway", "imagegen", "recon", "render")}
    if args.log_dir is None:
        args.log_dir = tempfile.mkdtemp(prefix="threegen-logs-")
    running = _start_stack(args, ports)
    try:
        return run_generate(args, Connection(running.gateway))
    finally:
        running.stop()


def cmd_models(args: argparse.Namespace) -> int:
    import grpc

    from threegen.common.v1 import common_pb2
    from threegen.gateway.v1 import gateway_pb2

    conn = connection(args)
    try:
        with conn.channel() as channel:
            reply = conn.stub(channel).ListModels(
                gateway_pb2.ListModelsRequest(), timeout=10, metadata=conn.metadata
            )
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json(reply)
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


def describe_job(job) -> str:
    from threegen.gateway.v1 import gateway_pb2

    status = gateway_pb2.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()
    detail = ""
    if job.status == gateway_pb2.JOB_STATUS_QUEUED:
        detail = f", position {job.queue_position}"
    elif job.status == gateway_pb2.JOB_STATUS_RUNNING:
        detail = f", {job.progress.overall_fraction:.0%} ({job.progress.message or job.progress.step})"
    elif job.status == gateway_pb2.JOB_STATUS_FAILED:
        detail = f": {job.error_code} {job.error_message}"
    elif job.status == gateway_pb2.JOB_STATUS_SUCCEEDED:
        detail = f", {len(job.result.artifacts)} artifacts" + (" (cached)" if job.cached else "")
    return f"{job.id} {status}{detail}"


def cmd_submit(args: argparse.Namespace) -> int:
    import grpc

    from threegen.gateway.v1 import gateway_pb2

    if not args.prompt and not args.image:
        console.print("[red]give a prompt or --image[/]")
        return 2
    conn = connection(args)
    try:
        with conn.channel() as channel:
            job = (
                conn.stub(channel)
                .SubmitJob(
                    gateway_pb2.SubmitJobRequest(request=build_request(args)),
                    timeout=60,
                    metadata=conn.metadata,
                )
                .job
            )
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json(job)
    else:
        console.print(describe_job(job))
        console.print(f"follow it with: threegen watch {job.id} -o out/")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from threegen.gateway.v1 import gateway_pb2

    conn = connection(args)
    try:
        with conn.channel() as channel:
            job = (
                conn.stub(channel)
                .GetJob(gateway_pb2.GetJobRequest(job_id=args.job), timeout=30, metadata=conn.metadata)
                .job
            )
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json(job)
    else:
        console.print(describe_job(job))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import grpc

    from threegen import client
    from threegen.gateway.v1 import gateway_pb2

    conn = connection(args)
    job = None
    try:
        with progress_bars(args.json) as bars:
            stages = StageBars(bars)
            for job in client.watch(conn, args.job):
                if job.HasField("progress"):
                    stages.update(job.progress)
                if job.status == gateway_pb2.JOB_STATUS_SUCCEEDED:
                    stages.finish()
        if job is not None and job.status == gateway_pb2.JOB_STATUS_SUCCEEDED and args.output:
            written = client.save(client.download(conn, args.job).values(), Path(args.output))
        else:
            written = []
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json({"job": json.loads(_to_json(job)) if job else None, "files": [str(p) for p in written]})
    else:
        console.print(describe_job(job) if job else "no state received")
        for path in written:
            console.print(f"  wrote {path} ({path.stat().st_size} bytes)")
    return 0 if job is not None and job.status == gateway_pb2.JOB_STATUS_SUCCEEDED else 1


def cmd_download(args: argparse.Namespace) -> int:
    import grpc

    from threegen import client

    try:
        artifacts = client.download(connection(args), args.job, args.names)
    except grpc.RpcError as error:
        return report_error(error)
    written = client.save(artifacts.values(), Path(args.output))
    if args.json:
        print_json({"files": [str(p) for p in written]})
    else:
        for path in written:
            console.print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    import grpc

    from threegen.gateway.v1 import gateway_pb2

    conn = connection(args)
    try:
        with conn.channel() as channel:
            job = (
                conn.stub(channel)
                .CancelJob(gateway_pb2.CancelJobRequest(job_id=args.job), timeout=60, metadata=conn.metadata)
                .job
            )
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json(job)
    else:
        console.print(describe_job(job))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import grpc

    from threegen.gateway.v1 import gateway_pb2

    conn = connection(args)
    status = getattr(gateway_pb2, f"JOB_STATUS_{args.status.upper()}") if args.status else 0
    try:
        with conn.channel() as channel:
            reply = conn.stub(channel).ListJobs(
                gateway_pb2.ListJobsRequest(page_size=args.limit, status=status),
                timeout=30,
                metadata=conn.metadata,
            )
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json(reply)
        return 0
    for job in reply.jobs:
        console.print(f"{describe_job(job)}  {job.prompt[:60]!r}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    import grpc

    from threegen import client

    try:
        reply = client.upload(connection(args), Path(args.file))
    except grpc.RpcError as error:
        return report_error(error)
    if args.json:
        print_json(reply)
    else:
        console.print(f"input id {reply.input_id} ({reply.size_bytes} bytes); use --image-input-id")
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
    env = os.environ.get

    def stack_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--host", default="127.0.0.1", help="address every service binds")
        q.add_argument("--log-dir", default=None, help="where service logs go")

    def connection_options(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--address", default=env("THREEGEN_ADDRESS", "localhost:50051"), help="gateway host:port"
        )
        q.add_argument("--api-key", default=env("THREEGEN_API_KEY", ""), help="API key (or THREEGEN_API_KEY)")
        q.add_argument("--tls-ca", default=env("THREEGEN_TLS_CA", ""), help="PEM CA bundle: connect with TLS")
        q.add_argument("--tls-cert", default=env("THREEGEN_TLS_CERT", ""), help="client certificate (mTLS)")
        q.add_argument("--tls-key", default=env("THREEGEN_TLS_KEY", ""), help="client key (mTLS)")
        q.add_argument("--json", action="store_true", help="print JSON for scripts, no progress bars")

    def request_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("prompt", nargs="?", default="")
        q.add_argument("--image", help="input image (skips text -> image)")
        q.add_argument("--image-input-id", default="", help="an input uploaded with `threegen upload`")
        q.add_argument("--mask", help="object mask PNG (SAM 3D)")
        q.add_argument("--seed", type=int)
        q.add_argument("--steps", type=int, help="diffusion steps (1-4)")
        q.add_argument("--sdxl", action="store_true", help="use SDXL-Turbo")
        q.add_argument("--image-size", type=int, help="generated image size (multiple of 64)")
        q.add_argument("--views", type=int, help="candidate images re-ranked by CLIP (1-8)")
        q.add_argument("--lora", action="append", default=[], metavar="NAME[:SCALE]", help="LoRA by name")
        q.add_argument("--family", help="recon family: triposr, trellis, hunyuan3d, sam3d, xcube")
        q.add_argument(
            "--output-kind", choices=["mesh", "splat", "points"], help="geometry wanted from recon"
        )
        q.add_argument("--mc-resolution", type=int, help="TripoSR marching-cubes resolution (32-512)")
        q.add_argument("--foreground-ratio", type=float, help="TripoSR foreground ratio (0.5-1)")
        q.add_argument("--formats", default="glb,ply", help="exports: glb,ply,obj,stl")
        q.add_argument("--no-preview", action="store_true", help="skip the turntable MP4")
        q.add_argument("--preview-seconds", type=float, default=3.0)
        q.add_argument("--fps", type=int, default=16)
        q.add_argument("--preview-size", type=int, default=512)
        q.add_argument("--thumbnail", action="store_true", help="also a PNG thumbnail")
        q.add_argument("--simplify", type=float, help="fraction of faces removed (TRELLIS's simplify)")
        q.add_argument("--texture-size", type=int, help="largest texture side in exports")

    up = sub.add_parser("up", help="run imagegen, recon, render and the gateway locally")
    stack_options(up)
    up.add_argument(
        "--tiny", action="store_true", help="use tiny random-weight checkpoints (written on first use)"
    )
    up.add_argument("--port", type=int, default=0, help="gateway port (default 50051)")
    up.set_defaults(func=cmd_up)

    gen = sub.add_parser("generate", help="text or image -> 3D asset + preview, with progress bars")
    request_options(gen)
    connection_options(gen)
    gen.add_argument("-o", "--output", default="out", help="folder for the artifacts")
    gen.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="start a local stack with tiny checkpoints, generate once, stop")
    request_options(demo)
    stack_options(demo)
    demo.add_argument("-o", "--output", default="out", help="folder for the artifacts")
    demo.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    demo.add_argument("--json", action="store_true", help="print JSON, no progress bars")
    demo.set_defaults(func=cmd_demo)

    submit = sub.add_parser("submit", help="queue a generate request as a job; prints its id")
    request_options(submit)
    connection_options(submit)
    submit.set_defaults(func=cmd_submit)

    for name, func, text in (("status", cmd_status, "show a job"), ("cancel", cmd_cancel, "cancel a job")):
        command = sub.add_parser(name, help=text)
        command.add_argument("job")
        connection_options(command)
        command.set_defaults(func=func)

    watch = sub.add_parser("watch", help="follow a job with progress bars; download its artifacts")
    watch.add_argument("job")
    watch.add_argument("-o", "--output", default="", help="download the artifacts here when it succeeds")
    connection_options(watch)
    watch.set_defaults(func=cmd_watch)

    download = sub.add_parser("download", help="download a finished job's artifacts")
    download.add_argument("job")
    download.add_argument("names", nargs="*", help="artifact names (all when none)")
    download.add_argument("-o", "--output", default="out")
    connection_options(download)
    download.set_defaults(func=cmd_download)

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=int, default=20)
    connection_options(jobs)
    jobs.set_defaults(func=cmd_jobs)

    upload = sub.add_parser("upload", help="upload an input image; prints its id")
    upload.add_argument("file")
    connection_options(upload)
    upload.set_defaults(func=cmd_upload)

    models = sub.add_parser("models", help="list models of every service")
    connection_options(models)
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
