"""imagegen gRPC servicer: validates, admits, runs the diffusion engine, streams PNGs back."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator

import grpc

from services.imagegen.params import validate
from services.imagegen.settings import MODEL_NAMES, ImageGenSettings
from threegen.chunks import Artifact, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.imagegen.v1 import imagegen_pb2, imagegen_pb2_grpc
from threegen.images import encode_png
from threegen.runtime.server import Runtime, Service
from threegen.runtime.work import Done
from threegen.weights import pick_device

log = logging.getLogger("threegen.imagegen")
SERVICE_NAME = imagegen_pb2.DESCRIPTOR.services_by_name["ImageGenService"].full_name


class ImageGenServicer(imagegen_pb2_grpc.ImageGenServiceServicer):
    def __init__(self, runtime: Runtime, settings: ImageGenSettings, state: dict):
        self.runtime = runtime
        self.settings = settings
        self.state = state

    async def Generate(
        self, request: imagegen_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[imagegen_pb2.GenerateResponse]:
        params = validate(request, default_model=self.settings.default_model, max_side=self.settings.max_side)
        self.state["loras"].check(params.loras)
        if not params.loras:
            params.loras = self.state.get("default_loras", ())
        if request.validate_only:
            yield imagegen_pb2.GenerateResponse(result=imagegen_pb2.GenerateResult(seed=params.seed))
            return
        self.runtime.require_ready()
        generator = self.state["generator"]
        result = None
        async for event in self.runtime.run(functools.partial(generator.generate, params)):
            if isinstance(event, Done):
                result = event.value
            else:
                yield imagegen_pb2.GenerateResponse(progress=event)
        assert result is not None
        # Encoders release the GIL: the views are compressed side by side.
        started = time.perf_counter()
        level = request.png_level if request.HasField("png_level") else self.settings.png_level
        pngs = await asyncio.gather(
            *(asyncio.to_thread(encode_png, view.image, level) for view in result.views)
        )
        result.timings.append(("encode_png", time.perf_counter() - started))
        artifacts = [Artifact(f"view_{rank}.png", png) for rank, png in enumerate(pngs)]
        for artifact in artifacts:
            for chunk in iter_chunks(artifact):
                yield imagegen_pb2.GenerateResponse(chunk=chunk)
        yield imagegen_pb2.GenerateResponse(
            result=imagegen_pb2.GenerateResult(
                seed=params.seed,
                views=[
                    imagegen_pb2.GeneratedView(
                        name=artifact.name,
                        candidate=view.candidate,
                        seed=view.seed,
                        clip_score=view.clip_score,
                        rank=rank,
                    )
                    for rank, (artifact, view) in enumerate(zip(artifacts, result.views, strict=True))
                ],
                artifacts=[a.info() for a in artifacts],
                timings=[
                    common_pb2.Timing(stage=common_pb2.STAGE_IMAGE, step=s, seconds=t)
                    for s, t in result.timings
                ],
                model=result.model,
                batch_requests=result.batch_size,
            )
        )

    async def ListModels(
        self, request: imagegen_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> imagegen_pb2.ListModelsResponse:
        store = self.state.get("store")
        device = store.device if store else ""
        models = []
        for name in MODEL_NAMES:
            if store is None:
                state = common_pb2.MODEL_STATE_LOADING
            elif store.loaded(name):
                state = common_pb2.MODEL_STATE_READY
            elif store.error(name):
                state = common_pb2.MODEL_STATE_ERROR
            else:
                state = common_pb2.MODEL_STATE_AVAILABLE
            models.append(
                common_pb2.ModelInfo(
                    name=name,
                    source=self.settings.sd_turbo_model
                    if name == "sd-turbo"
                    else self.settings.sdxl_turbo_model,
                    state=state,
                    device=device,
                    memory_bytes=store.memory(name) if store else 0,
                    error=store.error(name) if store else "",
                    accepts_text=True,
                    service="imagegen",
                )
            )
        for name, helper in (("clip", self.state.get("clip")), ("rembg", self.state.get("background"))):
            if helper is None:
                continue
            ready = helper.ready
            state = (
                common_pb2.MODEL_STATE_READY
                if ready
                else (common_pb2.MODEL_STATE_ERROR if helper.error else common_pb2.MODEL_STATE_AVAILABLE)
            )
            models.append(
                common_pb2.ModelInfo(
                    name=name,
                    source=helper.source,
                    state=state,
                    device=device if name == "clip" else "cpu",
                    memory_bytes=helper.memory_bytes,
                    error=helper.error,
                    accepts_image=True,
                    service="imagegen",
                )
            )
        return imagegen_pb2.ListModelsResponse(models=models)


def build(settings: ImageGenSettings | None = None) -> Service:
    settings = settings or ImageGenSettings.from_env()
    state: dict = {}

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        from services.imagegen.models import LoraLibrary

        state["loras"] = LoraLibrary(settings.lora_dir)
        imagegen_pb2_grpc.add_ImageGenServiceServicer_to_server(
            ImageGenServicer(runtime, settings, state), server
        )

    def load(runtime: Runtime) -> None:
        from services.imagegen.models import ClipScorer, ModelStore
        from services.imagegen.pipeline import ImageGenerator
        from threegen.background import BackgroundRemover

        device = pick_device(settings.device)
        store = ModelStore(settings, device)
        state["store"] = store
        state["clip"] = clip = ClipScorer(settings.clip_model, device)
        rembg_file = settings.rembg_model if settings.rembg_model.endswith(".onnx") else ""
        state["background"] = background = BackgroundRemover(rembg_file, settings.rembg_model)
        loras = state["loras"]
        defaults = tuple(
            zip(settings.loras, settings.lora_scales or (1.0,) * len(settings.loras), strict=True)
        )
        loras.check(defaults, prefix="THREEGEN_IMAGEGEN_LORAS")
        state["default_loras"] = defaults
        for name in settings.preload:
            with store.use(name, pinned=True):
                pass
        try:
            clip.load()
        except Exception:
            log.warning("CLIP re-ranking unavailable: %s", clip.error)
        if rembg_file:
            background.session()
        state["generator"] = ImageGenerator(
            store, loras, clip, background, settings.batch_window_ms / 1000.0, settings.max_batch_images
        )

    def close() -> None:
        generator = state.get("generator")
        if generator is not None:
            generator.batcher.stop()

    return Service(
        name="imagegen",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=register,
        load=load,
        stage=common_pb2.STAGE_IMAGE,
        close=close,
    )
