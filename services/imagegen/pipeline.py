"""Text -> images with SD-Turbo / SDXL-Turbo through diffusers (no gRPC here).

A request waits in the batcher, runs (possibly together with others) on the GPU thread, where
its candidates are also re-ranked by CLIP; then, on its own thread, the best are cut out with
rembg if asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from services.imagegen.batching import Batcher, Ticket
from services.imagegen.models import ClipScorer, LoraLibrary, ModelStore
from services.imagegen.params import ImageParams
from threegen.background import BackgroundRemover
from threegen.errors import Cancelled, Unavailable
from threegen.runtime.work import Reporter

log = logging.getLogger("threegen.imagegen")


@dataclass
class View:
    image: Image.Image
    candidate: int
    seed: int
    clip_score: float = 0.0


@dataclass
class BatchShare:
    """What one request gets back from a batch: its slice of the images and its step times."""

    offset: int
    count: int
    scores: list[float]
    diffusion: float
    rerank: float
    readback: float = 0.0
    pixels: np.ndarray | None = None
    error: Exception | None = None


@dataclass
class ImageResult:
    views: list[View]
    model: str
    timings: list[tuple[str, float]] = field(default_factory=list)
    batch_size: int = 1


class ImageGenerator:
    def __init__(
        self,
        store: ModelStore,
        loras: LoraLibrary,
        clip: ClipScorer,
        background: BackgroundRemover,
        window_s: float,
        max_batch_images: int,
    ):
        self.store = store
        self.loras = loras
        self.clip = clip
        self.background = background
        self.batcher = Batcher(self._run_batch, window_s, max_batch_images)

    def _run_batch(self, tickets: list[Ticket]) -> None:
        """One forward pass for every ticket, then, still on this thread, each ticket's CLIP
        re-rank and one copy of all images to the host. Done here, that GPU work never queues
        behind the next batch's pass, so members leave as soon as their own pass ends."""
        first: ImageParams = tickets[0].params
        started = time.perf_counter()
        with self.store.use(first.model) as resident:
            self.loras.apply(resident, first.loras)
            prompts, negatives, generators = [], [], []
            for ticket in tickets:
                p: ImageParams = ticket.params
                for i in range(p.num_views):
                    prompts.append(p.prompt)
                    negatives.append(p.negative_prompt)
                    generators.append(
                        torch.Generator(device=self.store.device).manual_seed((p.seed + i) % 2**32)
                    )
            others = f" (batched with {len(tickets) - 1} other requests)" if len(tickets) > 1 else ""

            def on_step(_pipe: object, step: int, _timestep: object, kwargs: dict) -> dict:
                message = f"step {step + 1}/{first.steps}{others}"
                alive = [t.report("denoise", (step + 1) / first.steps, message) for t in tickets]
                if not any(alive):
                    raise Cancelled("every request of the batch was cancelled")
                return kwargs

            use_cfg = first.guidance_scale > 1.0
            images = resident.pipe(  # type: ignore[operator]
                output_type="pt",  # stays on the GPU: CLIP ranks it there
                prompt=prompts,
                negative_prompt=negatives if use_cfg and any(negatives) else None,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                width=first.width,
                height=first.height,
                generator=generators,
                callback_on_step_end=on_step,
            ).images
            if self.store.device.startswith("cuda"):
                torch.cuda.synchronize(torch.device(self.store.device))
        diffusion = time.perf_counter() - started
        shares, offset = [], 0
        for ticket in tickets:
            count = ticket.params.num_views
            share = BatchShare(offset, count, [0.0] * count, diffusion, 0.0)
            if count > 1 and not ticket.gone:
                rerank_started = time.perf_counter()
                try:
                    share.scores = self.clip.scores(ticket.params.prompt, images[offset : offset + count])
                except Exception as exc:  # this request fails; the others of the batch go on
                    share.error = exc
                share.rerank = time.perf_counter() - rerank_started
            shares.append(share)
            offset += count
        copy_started = time.perf_counter()
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        readback = time.perf_counter() - copy_started
        for ticket, share in zip(tickets, shares, strict=True):  # all or none: a failure reaches every member
            share.pixels, share.readback = pixels[share.offset : share.offset + share.count], readback
            ticket.result = share

    def generate(self, params: ImageParams, reporter: Reporter) -> ImageResult:
        if params.num_views > 1 and self.clip.model is None:
            try:
                self.clip.load()
            except Exception as exc:
                raise Unavailable(
                    f"CLIP re-ranking is unavailable ({self.clip.error}); ask for one view"
                ) from exc
        queued = time.perf_counter()
        reporter.progress("queued", 0.0, "waiting for the GPU")
        ticket = self.batcher.submit(params, reporter.span(0.0, 0.85), params.num_views, params.batch_key())
        share: BatchShare = ticket.result
        if share.error is not None:
            raise Unavailable(f"CLIP re-ranking failed: {share.error}") from share.error
        own = share.diffusion + share.rerank + share.readback
        timings = [("wait", time.perf_counter() - queued - own), ("diffusion", share.diffusion)]
        if share.count > 1:
            timings.append(("rerank", share.rerank))
        timings.append(("readback", share.readback))
        scores = share.scores
        order = sorted(range(share.count), key=lambda i: (-scores[i], i))[: params.top_k]
        if share.count > 1:
            reporter.progress("rerank", 0.9, f"best CLIP score {scores[order[0]]:.1f}")
        views = [
            View(Image.fromarray(share.pixels[i]), i, (params.seed + i) % 2**32, scores[i]) for i in order
        ]
        if params.remove_background:
            started = time.perf_counter()
            for view in views:
                reporter.check()
                view.image = self.background.cutout(view.image, params.foreground_ratio)
            timings.append(("remove_background", time.perf_counter() - started))
        reporter.progress("done", 1.0)
        return ImageResult(views, params.model, timings, ticket.batch_size)
