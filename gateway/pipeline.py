"""The Generate pipeline: text -> image -> geometry -> artifacts, across the backend services.

Everything a backend streams is passed on as it arrives: progress (with an overall fraction
added, stages weighted) and render's artifact chunks, so the client sees every stage live.
Before any GPU work, the whole request is checked against the real backends (their
`validate_only` mode), so a bad render option fails in milliseconds, not after diffusion.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from gateway import urls
from gateway.backends import Backends, call_metadata, translate
from gateway.settings import GatewaySettings
from services.imagegen.params import MAX_PROMPT_CHARS
from threegen.chunks import Artifact, ArtifactCollector, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import Internal, InvalidArgument, Violations
from threegen.gateway.v1 import gateway_pb2
from threegen.imagegen.v1 import imagegen_pb2
from threegen.images import decode_image
from threegen.logs import REQUEST_ID
from threegen.recon.v1 import recon_pb2
from threegen.render.v1 import render_pb2

# Share of the overall progress bar each stage gets, by path.
WEIGHTS_FROM_TEXT = {
    common_pb2.STAGE_IMAGE: 0.2,
    common_pb2.STAGE_RECONSTRUCT: 0.5,
    common_pb2.STAGE_RENDER: 0.3,
}
WEIGHTS_FROM_IMAGE = {common_pb2.STAGE_RECONSTRUCT: 0.6, common_pb2.STAGE_RENDER: 0.4}


def default_outputs() -> render_pb2.RenderOptions:
    """Seed 000's outputs: GLB, PLY and a 3 s, 16 fps, 512 px turntable."""
    return render_pb2.RenderOptions(
        exports=[render_pb2.MESH_FORMAT_GLB, render_pb2.MESH_FORMAT_PLY],
        preview=render_pb2.PreviewOptions(seconds=3.0, fps=16, resolution=512),
    )


def _prefixer(old: str, new: str) -> Callable[[str], str]:
    def rename(path: str) -> str:
        if path == old or path.startswith(old + "."):
            return new + path[len(old) :]
        return path

    return rename


RENAME_IMAGEGEN = _prefixer("options", "image_options")
RENAME_RECON = _prefixer("options", "recon_options")
RENAME_RENDER = _prefixer("options", "outputs")


@dataclass
class Prepared:
    """A checked request with its inputs fetched and its route chosen."""

    image: bytes = b""
    mask: bytes = b""
    via_imagegen: bool = True
    seconds: float = 0.0  # spent checking: our fields, inputs, the backends' validate_only calls


@dataclass
class RenderCall:
    """render's call, under way while its geometry is still arriving from recon."""

    call: object  # grpc.aio stream-stream call
    name: str  # the geometry file being passed on
    kind: int
    chunks: asyncio.Queue  # recon's chunks of that file, in order, then None if recon stopped short
    uploaded: asyncio.Event  # set once render has the whole file, or its call ended early
    direct: int | None  # the export served from recon's own file (see GeneratePipeline._direct_type)


@dataclass
class Run:
    """State of one Generate call."""

    request: gateway_pb2.GenerateRequest
    prepared: Prepared
    outputs: render_pb2.RenderOptions
    seed: int
    weights: dict[int, float]
    timeout: Callable[[], float | None]
    started: float = field(default_factory=time.perf_counter)
    timings: list[common_pb2.Timing] = field(default_factory=list)
    views: list[imagegen_pb2.GeneratedView] = field(default_factory=list)
    artifacts: list[common_pb2.ArtifactInfo] = field(default_factory=list)
    stats: common_pb2.GeometryStats | None = None
    family: int = common_pb2.FAMILY_UNSPECIFIED
    image: bytes = b""
    image_sha256: str = ""  # known when the image came from imagegen
    geometry: Artifact | None = None
    geometry_kind: int = common_pb2.GEOMETRY_KIND_UNSPECIFIED
    # Files we hold for the client, sent once the next backend has its input: that upload is on
    # the request's critical path, the client's copy is not.
    deferred: list[Artifact] = field(default_factory=list)
    render: RenderCall | None = None
    relay_decided: bool = False  # recon's first chunk was seen (and render's call opened, for a GLB)

    def progress(self, event: common_pb2.Progress, stage: int) -> gateway_pb2.GenerateResponse:
        start = 0.0
        for s, weight in self.weights.items():
            if s == stage:
                break
            start += weight
        done = event.fraction if event.stage == stage else 0.0
        event.overall_fraction = min(1.0, start + self.weights[stage] * done)
        return gateway_pb2.GenerateResponse(progress=event)


class GeneratePipeline:
    def __init__(self, backends: Backends, settings: GatewaySettings, inputs: Callable[[str], bytes | None]):
        self.backends = backends
        self.settings = settings
        self.inputs = inputs  # upload id -> bytes
        self._models: tuple[float, recon_pb2.ListModelsResponse] | None = None

    async def recon_models(self) -> recon_pb2.ListModelsResponse:
        """recon's families and what they accept, cached for 30 s."""
        if self._models is None or time.monotonic() - self._models[0] > 30.0:
            deployments = self.backends.recon_deployments()
            replies = await asyncio.gather(*(self._list_models(stub) for _, stub in deployments))
            reply = replies[0]  # the default deployment's, for its default_family
            models = [
                m
                for (family, _), listed in zip(deployments, replies, strict=True)
                for m in listed.models
                if self.backends.speaks_for(family, m)
            ]
            del reply.models[:]
            reply.models.extend(models)
            self._models = (time.monotonic(), reply)
        return self._models[1]

    @staticmethod
    async def _list_models(stub: object) -> recon_pb2.ListModelsResponse:
        try:
            return await stub.ListModels(  # type: ignore[attr-defined]
                recon_pb2.ListModelsRequest(), timeout=10, metadata=call_metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise translate(error, "recon", RENAME_RECON) from None

    async def _takes_text(self, family: int) -> bool:
        models = await self.recon_models()
        family = family or models.default_family
        return any(m.family == family and m.accepts_text for m in models.models)

    async def _input(self, inline: bytes, upload_id: str, url: str, field_name: str, v: Violations) -> bytes:
        given = [name for name, value in (("", inline), ("_input_id", upload_id), ("_url", url)) if value]
        if len(given) > 1:
            v.add(field_name, f"give one of {field_name}, {field_name}_input_id, {field_name}_url")
            return b""
        if upload_id:
            data = self.inputs(upload_id)
            if data is None:
                v.add(f"{field_name}_input_id", f"no uploaded input {upload_id!r} (it may have expired)")
            return data or b""
        if url:
            if not self.settings.allow_image_urls:
                v.add(
                    f"{field_name}_url",
                    "URL inputs are disabled on this gateway (THREEGEN_GATEWAY_ALLOW_IMAGE_URLS)",
                )
                return b""
            return await asyncio.to_thread(urls.fetch, url, self.settings.max_upload_bytes)
        limit = self.settings.max_inline_image_bytes
        v.check(
            len(inline) <= limit,
            field_name,
            f"inline file of {len(inline)} bytes exceeds the limit of {limit} bytes; use UploadInput",
        )
        return inline

    async def check(self, request: gateway_pb2.GenerateRequest) -> Prepared:
        """Check our own fields and fetch the inputs, then the backends' (validate_only), all
        before any work; every problem is reported at once."""
        started = time.perf_counter()
        v = Violations()
        v.check(
            len(request.prompt) <= MAX_PROMPT_CHARS,
            "prompt",
            f"exceeds maximum length of {MAX_PROMPT_CHARS} characters",
        )
        prepared = Prepared()
        prepared.image = await self._input(
            request.image, request.image_input_id, request.image_url, "image", v
        )
        prepared.mask = await self._input(request.mask, request.mask_input_id, "", "mask", v)
        prepared.via_imagegen = not prepared.image
        if not prepared.image:
            if not request.prompt.strip():
                v.add("prompt", "required: give a prompt, an image, or both")
            elif await self._takes_text(request.recon_options.family):
                prepared.via_imagegen = False  # text-native families (TRELLIS text, XCube) skip imagegen
        checks = [self._check_recon(request), self._check_render(request)]
        limit = self.settings.max_image_pixels
        if prepared.image and not v.items:
            checks.append(asyncio.to_thread(decode_image, prepared.image, "image", limit))
        if prepared.mask and not v.items:
            checks.append(asyncio.to_thread(decode_image, prepared.mask, "mask", limit))
        if prepared.via_imagegen:
            checks.append(self._check_imagegen(request))
        results = await asyncio.gather(*checks, return_exceptions=True)
        # Every problem at once; where we already named a field, the backend's echo is dropped.
        ours = {field for field, _ in v.items}
        for result in results:
            if isinstance(result, InvalidArgument):
                for field_name, description in result.violations:
                    if field_name not in ours:
                        v.add(field_name, description)
            elif isinstance(result, BaseException):
                raise result
        v.raise_if_any()
        prepared.seconds = time.perf_counter() - started
        return prepared

    async def _drain(self, call: object, backend: str, rename: Callable[[str], str]) -> None:
        try:
            async for _ in call:  # type: ignore[attr-defined]
                pass
        except grpc.aio.AioRpcError as error:
            raise translate(error, backend, rename) from None

    async def _check_imagegen(self, request: gateway_pb2.GenerateRequest) -> None:
        call = self.backends.imagegen.Generate(
            imagegen_pb2.GenerateRequest(
                prompt=request.prompt, options=request.image_options, validate_only=True
            ),
            timeout=10,
            metadata=call_metadata(),
        )
        await self._drain(call, "imagegen", RENAME_IMAGEGEN)

    async def _check_recon(self, request: gateway_pb2.GenerateRequest) -> None:
        params = recon_pb2.ReconstructParams(
            prompt=request.prompt, options=request.recon_options, validate_only=True
        )
        call = self.backends.recon_for(request.recon_options.family).Reconstruct(
            iter([recon_pb2.ReconstructRequest(params=params)]), timeout=10, metadata=call_metadata()
        )
        await self._drain(call, "recon", RENAME_RECON)

    async def _check_render(self, request: gateway_pb2.GenerateRequest) -> None:
        outputs = request.outputs if request.HasField("outputs") else default_outputs()
        params = render_pb2.RenderParams(options=outputs, validate_only=True)
        call = self.backends.render.Render(
            iter([render_pb2.RenderRequest(params=params)]), timeout=10, metadata=call_metadata()
        )
        await self._drain(call, "render", RENAME_RENDER)

    async def generate(
        self,
        request: gateway_pb2.GenerateRequest,
        timeout: Callable[[], float | None],
        prepared: Prepared | None = None,
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        prepared = prepared or await self.check(request)
        run = Run(
            request=request,
            prepared=prepared,
            outputs=request.outputs if request.HasField("outputs") else default_outputs(),
            seed=request.seed if request.HasField("seed") else secrets.randbelow(2**32),
            weights=WEIGHTS_FROM_TEXT if prepared.via_imagegen else WEIGHTS_FROM_IMAGE,
            timeout=timeout,
        )
        run.image = prepared.image
        run.timings.append(
            common_pb2.Timing(stage=common_pb2.STAGE_QUEUED, step="check", seconds=prepared.seconds)
        )
        try:
            if prepared.via_imagegen:
                async for response in self._image(run):
                    yield response
            async for response in self._reconstruct(run):
                yield response
            async for response in self._render(run):
                yield response
        finally:
            self._close_render(run)
        yield gateway_pb2.GenerateResponse(
            result=gateway_pb2.GenerateResult(
                seed=run.seed,
                stats=run.stats,
                artifacts=run.artifacts,
                timings=run.timings,
                total_seconds=time.perf_counter() - run.started,
                views=run.views,
                family=run.family,
                request_id=REQUEST_ID.get(),
            )
        )

    @staticmethod
    async def _deliver(
        run: Run, uploaded: asyncio.Event, call: object
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        """The deferred files, after the backend call under way has received its input."""
        if not run.deferred:
            return
        try:
            await uploaded.wait()
            while run.deferred:
                for chunk in iter_chunks(run.deferred.pop(0)):
                    yield gateway_pb2.GenerateResponse(chunk=chunk)
        except BaseException:
            call.cancel()  # type: ignore[attr-defined]
            raise

    @staticmethod
    def _overhead(run: Run, stage: int, started: float, backend_timings: object) -> None:
        """What a backend call cost beyond the work it reports: transfer, plumbing, queueing.
        Render's clock starts when recon's stream has ended: a GLB upload that overlapped recon's
        transfer is in recon's figure. A stage's figure also holds any time the client took to
        receive the files sent to it during that stage beyond the backend's own work."""
        worked = sum(t.seconds for t in backend_timings)  # type: ignore[attr-defined]
        run.timings.append(
            common_pb2.Timing(
                stage=stage, step="rpc_overhead", seconds=max(0.0, time.perf_counter() - started - worked)
            )
        )

    @staticmethod
    def _collect(collector: ArtifactCollector, chunk: common_pb2.Chunk, backend: str) -> Artifact | None:
        """A broken chunk stream from a backend is our failure, not the client's bad input."""
        try:
            return collector.add(chunk)
        except InvalidArgument as exc:
            raise Internal(f"{backend} sent a corrupt artifact stream: {exc.message}") from None

    async def _stream(
        self, call: object, backend: str, rename: Callable[[str], str]
    ) -> AsyncIterator[object]:
        """Iterate a backend stream; cancel it if we stop early; translate its errors."""
        try:
            async for response in call:  # type: ignore[attr-defined]
                yield response
        except grpc.aio.AioRpcError as error:
            raise translate(error, backend, rename) from None
        finally:
            if not call.done():  # type: ignore[attr-defined]
                call.cancel()  # type: ignore[attr-defined]

    async def _image(self, run: Run) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        request = imagegen_pb2.GenerateRequest(
            prompt=run.request.prompt, seed=run.seed, options=run.request.image_options
        )
        if self.settings.image_png_level >= 0:
            request.png_level = self.settings.image_png_level
        started = time.perf_counter()
        call = self.backends.imagegen.Generate(request, timeout=run.timeout(), metadata=call_metadata())
        collector = ArtifactCollector("imagegen.chunk", verify=False)  # relayed: recon checks the digest
        result = None
        async for response in self._stream(call, "imagegen", RENAME_IMAGEGEN):
            kind = response.WhichOneof("event")
            if kind == "progress":
                yield run.progress(response.progress, common_pb2.STAGE_IMAGE)
            elif kind == "chunk":
                self._collect(collector, response.chunk, "imagegen")
            else:
                result = response.result
        if result is None or not result.views:
            raise InvalidArgument([("prompt", "imagegen returned no image")])
        best = collector.finished[result.views[0].name]
        run.image, run.image_sha256 = best.data, best.sha256
        run.views.extend(result.views)
        run.timings.extend(result.timings)
        self._overhead(run, common_pb2.STAGE_IMAGE, started, result.timings)
        image = Artifact("image.png", best.data, sha256=best.sha256)
        run.deferred.append(image)  # to the client once recon has it
        run.artifacts.append(image.info())

    async def _reconstruct(self, run: Run) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        params = recon_pb2.ReconstructParams(
            prompt=run.request.prompt, seed=run.seed, options=run.request.recon_options
        )

        async def requests() -> AsyncIterator[recon_pb2.ReconstructRequest]:
            yield recon_pb2.ReconstructRequest(params=params)
            if run.image:
                for chunk in iter_chunks(Artifact("input.png", run.image, sha256=run.image_sha256)):
                    yield recon_pb2.ReconstructRequest(image=chunk)
            if run.prepared.mask:
                for chunk in iter_chunks(Artifact("mask.png", run.prepared.mask)):
                    yield recon_pb2.ReconstructRequest(mask=chunk)
            uploaded.set()

        started = time.perf_counter()
        stub = self.backends.recon_for(run.request.recon_options.family)
        uploaded = asyncio.Event()  # set once the request stream is written, or the call ended early
        call = stub.Reconstruct(requests(), timeout=run.timeout(), metadata=call_metadata())
        call.add_done_callback(lambda _: uploaded.set())
        async for response in self._deliver(run, uploaded, call):
            yield response
        collector = ArtifactCollector("recon.chunk", verify=False)  # relayed: render, client check
        result = None
        async for response in self._stream(call, "recon", RENAME_RECON):
            kind = response.WhichOneof("event")
            if kind == "progress":
                yield run.progress(response.progress, common_pb2.STAGE_RECONSTRUCT)
            elif kind == "chunk":
                self._collect(collector, response.chunk, "recon")
                self._relay(run, response.chunk)
            else:
                result = response.result
        if result is None or not result.artifacts:
            raise InvalidArgument([("recon_options", "recon returned no geometry")])
        run.geometry = collector.finished[result.artifacts[0].name]
        run.geometry_kind = result.stats.kind
        for extra in result.artifacts[1:]:  # e.g. TRELLIS's splats beside its mesh: for the client only
            run.deferred.append(collector.finished[extra.name])
            run.artifacts.append(extra)
        run.stats = result.stats
        run.family = result.family
        run.timings.extend(result.timings)
        self._overhead(run, common_pb2.STAGE_RECONSTRUCT, started, result.timings)

    @staticmethod
    def _direct_type(options: render_pb2.RenderOptions, kind: int, head: bytes) -> int | None:
        """The export that is recon's mesh file itself, when one is requested: render would
        return it unchanged (no simplification, no texture limit), so it is taken out of
        render's list and sent from here instead of making the round trip."""
        if kind != common_pb2.GEOMETRY_KIND_MESH:
            return None
        if options.HasField("simplify") or options.texture_size_limit:
            return None
        file_type = {b"glTF": render_pb2.MESH_FORMAT_GLB, b"ply\n": render_pb2.MESH_FORMAT_PLY}.get(head[:4])
        if file_type is None or file_type not in options.exports:
            return None
        kept = [f for f in options.exports if f != file_type]
        del options.exports[:]
        options.exports.extend(kept)
        return file_type

    def _start_render(self, run: Run, kind: int, name: str, head: bytes) -> RenderCall:
        """Open render's call for the file `name`, which starts with `head`; its chunks follow
        through the queue as they come."""
        options = render_pb2.RenderOptions()
        options.CopyFrom(run.outputs)
        direct = self._direct_type(options, kind, head)
        params = render_pb2.RenderParams(kind=kind, options=options)
        chunks: asyncio.Queue = asyncio.Queue()
        uploaded = asyncio.Event()

        async def requests() -> AsyncIterator[render_pb2.RenderRequest]:
            yield render_pb2.RenderRequest(params=params)
            while (chunk := await chunks.get()) is not None:
                yield render_pb2.RenderRequest(geometry=chunk)
                if chunk.last:
                    uploaded.set()
                    return

        call = self.backends.render.Render(requests(), timeout=run.timeout(), metadata=call_metadata())
        call.add_done_callback(lambda _: uploaded.set())
        return RenderCall(call, name, kind, chunks, uploaded, direct)

    @staticmethod
    def _close_render(run: Run) -> None:
        """However the request ends: cancel render's call if it is still going, and end its
        upload, which may be waiting for chunks that will not come (gRPC leaves the task reading
        it running when the call ended by itself)."""
        if run.render is None:
            return
        run.render.chunks.put_nowait(None)
        if not run.render.call.done():  # type: ignore[attr-defined]
            run.render.call.cancel()  # type: ignore[attr-defined]

    def _relay(self, run: Run, chunk: common_pb2.Chunk) -> None:
        """recon's mesh goes on to render chunk by chunk as it arrives, so the two transfers
        overlap. Only for a GLB, the one format that says from its first bytes what it holds (a
        mesh); a PLY may be points, splats or a mesh, and waits for recon's result."""
        if not run.relay_decided:
            run.relay_decided = True  # recon sends its main file first
            head = chunk.data[:4]
            if chunk.offset == 0 and head == b"glTF":
                run.render = self._start_render(run, common_pb2.GEOMETRY_KIND_MESH, chunk.name, head)
        if run.render is not None and chunk.name == run.render.name:
            run.render.chunks.put_nowait(chunk)

    async def _render(self, run: Run) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        assert run.geometry is not None
        geometry = run.geometry
        started = time.perf_counter()
        if run.render is None:
            run.render = self._start_render(run, run.geometry_kind, geometry.name, geometry.data[:4])
            for chunk in iter_chunks(geometry):
                run.render.chunks.put_nowait(chunk)
        elif (run.render.name, run.render.kind) != (geometry.name, run.geometry_kind):
            raise Internal(
                f"recon's main file is {geometry.name} ({common_pb2.GeometryKind.Name(run.geometry_kind)}), "
                f"but {run.render.name} went to render"
            )
        render = run.render
        # The files we already hold go to the client while render works.
        if render.direct is not None:
            suffix = render_pb2.MeshFormat.Name(render.direct).removeprefix("MESH_FORMAT_").lower()
            direct = Artifact(f"mesh.{suffix}", geometry.data, sha256=geometry.sha256)
            run.deferred.append(direct)
            run.artifacts.append(direct.info())
        if run.geometry_kind == common_pb2.GEOMETRY_KIND_POINT_CLOUD and run.outputs.HasField(
            "reconstruct_surface"
        ):
            run.deferred.append(geometry)  # render returns only the mesh made from the points: the
            run.artifacts.append(geometry.info())  # points themselves (XCube's result) go from here
        async for response in self._deliver(run, render.uploaded, render.call):
            yield response
        collector = ArtifactCollector("render.chunk", verify=False)  # relayed: the client checks
        async for response in self._stream(render.call, "render", RENAME_RENDER):
            kind = response.WhichOneof("event")
            if kind == "progress":
                yield run.progress(response.progress, common_pb2.STAGE_RENDER)
            elif kind == "chunk":
                # Passed on at once (the client checks the digest): it gets bytes while render works.
                finished = self._collect(collector, response.chunk, "render")
                yield gateway_pb2.GenerateResponse(chunk=response.chunk)
                if finished is not None:
                    run.artifacts.append(finished.info())
            else:
                run.timings.extend(response.result.timings)
                self._overhead(run, common_pb2.STAGE_RENDER, started, response.result.timings)
                if response.result.HasField("stats"):
                    run.stats = response.result.stats
