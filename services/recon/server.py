"""recon gRPC servicer: validates, admits, runs the family in a worker, streams geometry back."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator

import grpc

from services.recon.families import NAME_BY_ENUM, REGISTRY, family_class
from services.recon.families.base import Family, ReconInput, ReconOutput
from services.recon.settings import ReconSettings
from threegen.background import BackgroundRemover
from threegen.chunks import iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import Unavailable, Violations
from threegen.images import decode_image, has_transparency
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc
from threegen.runtime.server import Runtime, Service
from threegen.runtime.work import Done, Reporter
from threegen.uploads import read_upload
from threegen.weights import pick_device

log = logging.getLogger("threegen.recon")
MAX_PROMPT_CHARS = 1000
SERVICE_NAME = recon_pb2.DESCRIPTOR.services_by_name["ReconService"].full_name


class ReconServicer(recon_pb2_grpc.ReconServiceServicer):
    def __init__(self, runtime: Runtime, settings: ReconSettings, families: dict[str, Family]):
        self.runtime = runtime
        self.settings = settings
        self.families = families
        model_file = settings.rembg_model if settings.rembg_model.endswith(".onnx") else ""
        self.background = BackgroundRemover(model_file, settings.rembg_model)

    def _family(self, options: recon_pb2.ReconOptions, violations: Violations) -> Family | None:
        if options.family == common_pb2.FAMILY_UNSPECIFIED:
            return self.families[self.settings.default_family]
        name = NAME_BY_ENUM.get(options.family)
        label = (
            common_pb2.Family.Name(options.family)
            if options.family in common_pb2.Family.values()
            else str(options.family)
        )
        if name is None:
            known = ", ".join(common_pb2.Family.Name(v) for v in sorted(NAME_BY_ENUM))
            violations.add("options.family", f"{label} is not implemented; known: {known}")
            return None
        if name not in self.families:
            violations.add(
                "options.family",
                f"{label} is not served by this deployment (serves {', '.join(sorted(self.families))})",
            )
            return None
        return self.families[name]

    async def _validate(self, upload) -> tuple[Family, ReconInput, float]:
        """-> the family, its input, and seconds spent decoding the images."""
        params: recon_pb2.ReconstructParams = upload.params
        dry_run = params.validate_only
        options = params.options
        v = Violations()
        family = self._family(options, v)
        v.check(
            len(params.prompt) <= MAX_PROMPT_CHARS,
            "prompt",
            f"exceeds maximum length of {MAX_PROMPT_CHARS} characters",
        )
        if family is None:
            v.raise_if_any()
            raise AssertionError("unreachable")
        chosen = options.WhichOneof("family_options")
        if chosen is not None and chosen != family.options_field:
            v.add(f"options.{chosen}", f"options for {chosen} given, but the family is {family.name}")
        family_options = getattr(options, family.options_field) if chosen == family.options_field else None
        engine_params = family.parse_options(family_options, v)
        output = options.output or family.outputs[0]
        if output not in family.outputs:
            kinds = ", ".join(common_pb2.GeometryKind.Name(k) for k in family.outputs)
            shown = (
                common_pb2.GeometryKind.Name(output) if output in common_pb2.GeometryKind.values() else output
            )
            v.add("options.output", f"{shown} is not produced by {family.name} (it makes {kinds})")
        image_file = upload.files.get("image")
        mask_file = upload.files.get("mask")
        if image_file is None and not family.accepts_text and not dry_run:
            v.add("image", f"required: family {family.name} reconstructs from an image")
        if image_file is None and family.accepts_text and not params.prompt.strip() and not dry_run:
            v.add("prompt", f"required when no image is sent (family {family.name})")
        if image_file is not None and not family.accepts_image:
            v.add("image", f"family {family.name} takes a text prompt, not an image")
        if mask_file is not None and family.name != "sam3d":
            v.add("mask", f"family {family.name} takes no mask")
        v.raise_if_any()
        limit = self.settings.max_image_pixels
        started = time.perf_counter()
        image = await asyncio.to_thread(decode_image, image_file.data, "image", limit) if image_file else None
        mask = await asyncio.to_thread(decode_image, mask_file.data, "mask", limit) if mask_file else None
        decoded = time.perf_counter() - started
        seed = params.seed if params.HasField("seed") else secrets.randbelow(2**32)
        explicit = options.HasField("remove_background")
        remove_bg = options.remove_background if explicit else True
        job = ReconInput(image, mask, params.prompt, seed, output, remove_bg, engine_params, explicit)
        return family, job, decoded

    def _work(self, family: Family, job: ReconInput, reporter: Reporter) -> ReconOutput:
        """Cut the object out of an opaque image first (when asked), then run the family."""
        if job.image is not None and job.remove_background and not has_transparency(job.image):
            try:
                job.image = self.background.remove(job.image)
                reporter.progress("remove_background", 0.05)
            except Unavailable:
                if job.remove_background_explicit:
                    raise
                reporter.progress(
                    "remove_background", 0.05, "background removal unavailable; image used as is"
                )
        return family.run(job, reporter.span(0.05, 1.0))

    async def Reconstruct(
        self, request_iterator: AsyncIterator[recon_pb2.ReconstructRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[recon_pb2.ReconstructResponse]:
        limit = self.settings.max_image_bytes
        upload = await read_upload(
            request_iterator,
            files={"image": limit, "mask": limit},
            idle_seconds=self.settings.upload_idle_seconds,
        )
        family, job, decoded = await self._validate(upload)
        if upload.params.validate_only:
            yield recon_pb2.ReconstructResponse(
                result=recon_pb2.ReconstructResult(seed=job.seed, family=family.family, model=family.name)
            )
            return
        self.runtime.require_ready()
        if family.state != common_pb2.MODEL_STATE_READY:
            raise Unavailable(f"family {family.name} is not loaded: {family.error or 'loading'}")
        output: ReconOutput | None = None
        async for event in self.runtime.run(functools.partial(self._work, family, job)):
            if isinstance(event, Done):
                output = event.value
            else:
                yield recon_pb2.ReconstructResponse(progress=event)
        assert output is not None
        for artifact in output.artifacts:
            for chunk in iter_chunks(artifact):
                yield recon_pb2.ReconstructResponse(chunk=chunk)
        yield recon_pb2.ReconstructResponse(
            result=recon_pb2.ReconstructResult(
                artifacts=[a.info() for a in output.artifacts],
                stats=output.stats.to_proto(),
                seed=job.seed,
                timings=[
                    common_pb2.Timing(stage=common_pb2.STAGE_RECONSTRUCT, step=s, seconds=t)
                    for s, t in [("decode_input", decoded), *output.timings]
                ],
                family=family.family,
                model=family.name,
            )
        )

    async def ListModels(
        self, request: recon_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> recon_pb2.ListModelsResponse:
        return recon_pb2.ListModelsResponse(
            models=[f.info() for f in self.families.values()],
            default_family=REGISTRY[self.settings.default_family][2],
        )


def build(settings: ReconSettings | None = None) -> Service:
    settings = settings or ReconSettings.from_env()
    families: dict[str, Family] = {}

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        device = pick_device(settings.device)
        for name in settings.families:
            families[name] = family_class(name)(settings, device)
        recon_pb2_grpc.add_ReconServiceServicer_to_server(ReconServicer(runtime, settings, families), server)

    def load(runtime: Runtime) -> None:
        failures = []
        for family in families.values():
            family.state = common_pb2.MODEL_STATE_LOADING
            try:
                family.load()
            except Exception as exc:
                family.state = common_pb2.MODEL_STATE_ERROR
                family.error = f"{type(exc).__name__}: {exc}"
                failures.append(f"{family.name}: {family.error}")
            else:
                family.state = common_pb2.MODEL_STATE_READY
        if failures and len(failures) == len(families):
            raise RuntimeError("; ".join(failures))
        for failure in failures:  # the other families serve; requests for this one get UNAVAILABLE
            log.error("recon family failed to load: %s", failure)

    return Service(
        name="recon",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=register,
        load=load,
        stage=common_pb2.STAGE_RECONSTRUCT,
    )
