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
class Run:
    """State of one Generate call."""

    request: gateway_pb2.GenerateRequest
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
    geometry: Artifact | None = None
    geometry_kind: int = common_pb2.GEOMETRY_KIND_UNSPECIFIED

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
    def __init__(self, backends: Backends, settings: GatewaySettings):
        self.backends = backends
        self.settings = settings

    async def check(self, request: gateway_pb2.GenerateRequest) -> None:
        """Check our own fields, then the backends' (validate_only), all before any work."""
        v = Violations()
        v.check(
            len(request.prompt) <= MAX_PROMPT_CHARS,
            "prompt",
            f"exceeds maximum length of {MAX_PROMPT_CHARS} characters",
        )
        v.check(
            bool(request.prompt.strip()) or bool(request.image),
            "prompt",
            "required: give a prompt, an image, or both",
        )
        v.check(
            len(request.image) <= self.settings.max_inline_image_bytes,
            "image",
            f"inline image of {len(request.image)} bytes exceeds the limit of "
            f"{self.settings.max_inline_image_bytes} bytes",
        )
        checks = [self._check_recon(request), self._check_render(request)]
        if request.image and not v.items:
            checks.append(
                asyncio.to_thread(decode_image, request.image, "image", self.settings.max_image_pixels)
            )
        if not request.image:
            checks.append(self._check_imagegen(request))
        results = await asyncio.gather(*checks, return_exceptions=True)
        # Every problem at once; where we already named a field, the backend's echo is dropped.
        ours = {field for field, _ in v.items}
        for result in results:
            if isinstance(result, InvalidArgument):
                for field, description in result.violations:
                    if field not in ours:
                        v.add(field, description)
            elif isinstance(result, BaseException):
                raise result
        v.raise_if_any()

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
        call = self.backends.recon.Reconstruct(
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
        self, request: gateway_pb2.GenerateRequest, timeout: Callable[[], float | None]
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        await self.check(request)
        run = Run(
            request=request,
            outputs=request.outputs if request.HasField("outputs") else default_outputs(),
            seed=request.seed if request.HasField("seed") else secrets.randbelow(2**32),
            weights=WEIGHTS_FROM_IMAGE if request.image else WEIGHTS_FROM_TEXT,
            timeout=timeout,
        )
        if request.image:
            run.image = request.image
        else:
            async for response in self._image(run):
                yield response
        async for response in self._reconstruct(run):
            yield response
        async for response in self._render(run):
            yield response
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
        call = self.backends.imagegen.Generate(request, timeout=run.timeout(), metadata=call_metadata())
        collector = ArtifactCollector("imagegen.chunk")
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
        run.image = best.data
        run.views.extend(result.views)
        run.timings.extend(result.timings)
        image = Artifact("image.png", best.data)
        for chunk in iter_chunks(image):
            yield gateway_pb2.GenerateResponse(chunk=chunk)
        run.artifacts.append(image.info())

    async def _reconstruct(self, run: Run) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        params = recon_pb2.ReconstructParams(
            prompt=run.request.prompt, seed=run.seed, options=run.request.recon_options
        )

        async def requests() -> AsyncIterator[recon_pb2.ReconstructRequest]:
            yield recon_pb2.ReconstructRequest(params=params)
            for chunk in iter_chunks(Artifact("input.png", run.image)):
                yield recon_pb2.ReconstructRequest(image=chunk)

        call = self.backends.recon.Reconstruct(requests(), timeout=run.timeout(), metadata=call_metadata())
        collector = ArtifactCollector("recon.chunk")
        result = None
        async for response in self._stream(call, "recon", RENAME_RECON):
            kind = response.WhichOneof("event")
            if kind == "progress":
                yield run.progress(response.progress, common_pb2.STAGE_RECONSTRUCT)
            elif kind == "chunk":
                self._collect(collector, response.chunk, "recon")
            else:
                result = response.result
        if result is None or not result.artifacts:
            raise InvalidArgument([("recon_options", "recon returned no geometry")])
        run.geometry = collector.finished[result.artifacts[0].name]
        run.geometry_kind = result.stats.kind
        run.stats = result.stats
        run.family = result.family
        run.timings.extend(result.timings)

    async def _render(self, run: Run) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        assert run.geometry is not None
        geometry = run.geometry
        params = render_pb2.RenderParams(kind=run.geometry_kind, options=run.outputs)

        async def requests() -> AsyncIterator[render_pb2.RenderRequest]:
            yield render_pb2.RenderRequest(params=params)
            for chunk in iter_chunks(geometry):
                yield render_pb2.RenderRequest(geometry=chunk)

        call = self.backends.render.Render(requests(), timeout=run.timeout(), metadata=call_metadata())
        collector = ArtifactCollector("render.chunk")
        async for response in self._stream(call, "render", RENAME_RENDER):
            kind = response.WhichOneof("event")
            if kind == "progress":
                yield run.progress(response.progress, common_pb2.STAGE_RENDER)
            elif kind == "chunk":
                # Checked here, then passed on at once: the client gets bytes while render works.
                finished = self._collect(collector, response.chunk, "render")
                yield gateway_pb2.GenerateResponse(chunk=response.chunk)
                if finished is not None:
                    run.artifacts.append(finished.info())
            else:
                run.timings.extend(response.result.timings)
                if response.result.HasField("stats"):
                    run.stats = response.result.stats
