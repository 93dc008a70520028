"""imagegen features on tiny real checkpoints: LoRA, CLIP re-rank, cut-out, batching, LRU budget."""

from __future__ import annotations

import io
import threading

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from services.imagegen.models import estimate_bytes
from services.imagegen.tiny import write_tiny_lora
from tests.conftest import imagegen_service
from tests.servers import serving
from tests.test_imagegen import generate
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.imagegen.v1 import imagegen_pb2, imagegen_pb2_grpc


def options(**kwargs) -> imagegen_pb2.ImageOptions:
    return imagegen_pb2.ImageOptions(width=64, height=64, steps=1, **kwargs)


def pixels(artifact) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(artifact.data))).astype(int)


@pytest.fixture(scope="module")
def lora_dir(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    write_tiny_lora(tiny["sd-turbo"], folder / "castle.safetensors", seed=1)
    write_tiny_lora(tiny["sd-turbo"], folder / "glaze.safetensors", seed=2)
    outside = tmp_path_factory.mktemp("elsewhere")
    write_tiny_lora(tiny["sd-turbo"], outside / "secret.safetensors", seed=3)
    (folder / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    return folder


@pytest.fixture(scope="module")
def lora_server(tiny, lora_dir):
    with serving(imagegen_service(tiny, lora_dir=str(lora_dir))) as server:
        yield server


def test_lora_changes_the_image_and_scale_zero_does_not(lora_server) -> None:
    base, _, _ = generate(
        lora_server, imagegen_pb2.GenerateRequest(prompt="a castle", seed=4, options=options())
    )
    styled, _, _ = generate(
        lora_server,
        imagegen_pb2.GenerateRequest(
            prompt="a castle",
            seed=4,
            options=options(loras=[imagegen_pb2.LoraWeight(name="castle", scale=1.0)]),
        ),
    )
    off, _, _ = generate(
        lora_server,
        imagegen_pb2.GenerateRequest(
            prompt="a castle",
            seed=4,
            options=options(loras=[imagegen_pb2.LoraWeight(name="castle.safetensors", scale=-0.0001)]),
        ),
    )
    both, _, _ = generate(
        lora_server,
        imagegen_pb2.GenerateRequest(
            prompt="a castle",
            seed=4,
            options=options(
                loras=[
                    imagegen_pb2.LoraWeight(name="castle", scale=1.0),
                    imagegen_pb2.LoraWeight(name="glaze", scale=0.7),
                ]
            ),
        ),
    )
    again, _, _ = generate(
        lora_server, imagegen_pb2.GenerateRequest(prompt="a castle", seed=4, options=options())
    )
    assert np.abs(pixels(styled["view_0.png"]) - pixels(base["view_0.png"])).mean() > 1.0
    assert np.abs(pixels(off["view_0.png"]) - pixels(base["view_0.png"])).mean() < 1.0
    assert np.abs(pixels(both["view_0.png"]) - pixels(styled["view_0.png"])).mean() > 1.0
    assert again["view_0.png"].sha256 == base["view_0.png"].sha256  # adapters switched off again


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../elsewhere/secret", "not a path"),
        ("/etc/passwd", "not a path"),
        ("sub/dir", "not a path"),
        ("escape", "inside the LoRA folder"),
        ("missing", "available: castle, escape, glaze"),
    ],
)
def test_lora_names_cannot_leave_the_folder(lora_server, name: str, message: str) -> None:
    request = imagegen_pb2.GenerateRequest(
        prompt="a", options=options(loras=[imagegen_pb2.LoraWeight(name=name)])
    )
    with lora_server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        list(imagegen_pb2_grpc.ImageGenServiceStub(channel).Generate(request, timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = dict(field_violations(caught.value))
    assert message in violations["options.loras[0].name"]


def test_default_loras_from_settings(tiny, lora_dir) -> None:
    request = imagegen_pb2.GenerateRequest(prompt="a castle", seed=4, options=options())
    with serving(
        imagegen_service(tiny, lora_dir=str(lora_dir), loras=("castle",), lora_scales=(1.0,))
    ) as server:
        defaulted, _, _ = generate(server, request)
    with serving(imagegen_service(tiny, lora_dir=str(lora_dir))) as server:
        explicit, _, _ = generate(
            server,
            imagegen_pb2.GenerateRequest(
                prompt="a castle", seed=4, options=options(loras=[imagegen_pb2.LoraWeight(name="castle")])
            ),
        )
    assert defaulted["view_0.png"].sha256 == explicit["view_0.png"].sha256


def test_clip_ranks_candidates_best_first(stack, tiny) -> None:
    from transformers import CLIPModel, CLIPProcessor

    request = imagegen_pb2.GenerateRequest(
        prompt="a blue vase", seed=11, options=options(num_views=4, top_k=3)
    )
    files, result, _ = generate(stack.imagegen, request)
    assert [v.rank for v in result.views] == [0, 1, 2]
    scores = [v.clip_score for v in result.views]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
    assert {v.seed for v in result.views} <= {11, 12, 13, 14}
    model = CLIPModel.from_pretrained(str(tiny["clip"])).eval()
    processor = CLIPProcessor.from_pretrained(str(tiny["clip"]))
    images = [Image.open(io.BytesIO(files[v.name].data)).convert("RGB") for v in result.views]
    with torch.no_grad():
        out = model(**processor(text=["a blue vase"], images=images, return_tensors="pt", padding=True))
    cosine = (
        torch.nn.functional.normalize(out.image_embeds, dim=-1)
        @ torch.nn.functional.normalize(out.text_embeds, dim=-1)[0]
    )
    assert np.allclose((cosine * 100).numpy(), scores, atol=0.5)


def test_background_removal_gives_a_centred_padded_cutout(stack) -> None:
    request = imagegen_pb2.GenerateRequest(
        prompt="a lamp", seed=2, options=options(remove_background=True, foreground_ratio=0.6)
    )
    files, result, _ = generate(stack.imagegen, request)
    image = Image.open(io.BytesIO(files["view_0.png"].data))
    assert image.mode == "RGBA"
    alpha = np.asarray(image)[..., 3]
    side = alpha.shape[0]
    assert alpha.shape[0] == alpha.shape[1]
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    assert abs(extent / side - 0.6) < 0.03
    assert (
        abs((rows[0] + rows[-1]) / 2 - (side - 1) / 2) <= 1.5
        or abs((cols[0] + cols[-1]) / 2 - (side - 1) / 2) <= 1.5
    )
    assert alpha[0, 0] == 0 and "remove_background" in {t.step for t in result.timings}


def test_concurrent_compatible_requests_share_a_batch(tiny) -> None:
    with serving(imagegen_service(tiny, batch_window_ms=300.0)) as server:
        results: dict[int, tuple] = {}

        def one(seed: int) -> None:
            results[seed] = generate(
                server, imagegen_pb2.GenerateRequest(prompt=f"p{seed}", seed=seed, options=options())
            )

        threads = [threading.Thread(target=one, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        messages = [p.message for _, (_, _, progress) in results.items() for p in progress]
        # The first runs at once; the rest, waiting behind it, share the next forward pass.
        assert any(
            "batched with 2 other requests" in m or "batched with 3 other requests" in m for m in messages
        )
        assert max(result.batch_requests for _, result, _ in results.values()) in (3, 4)
        assert min(result.batch_requests for _, result, _ in results.values()) >= 1
        alone, alone_result, _ = generate(
            server, imagegen_pb2.GenerateRequest(prompt="p2", seed=2, options=options())
        )
        assert alone_result.batch_requests == 1
        together = results[2][0]["view_0.png"]
        assert np.abs(pixels(together) - pixels(alone["view_0.png"])).max() <= 2  # same image, batched or not


def test_lru_evicts_idle_models_and_refuses_what_cannot_fit(tiny) -> None:
    sd = estimate_bytes(tiny["sd-turbo"], torch.float32, None)
    sdxl = estimate_bytes(tiny["sdxl-turbo"], torch.float32, None)
    budget_gb = (max(sd, sdxl) + min(sd, sdxl) // 2) / 2**30
    sdxl_request = imagegen_pb2.GenerateRequest(
        prompt="a", options=options(model=imagegen_pb2.IMAGE_MODEL_SDXL_TURBO)
    )
    with serving(imagegen_service(tiny, preload=(), memory_budget_gb=budget_gb)) as server:
        generate(server, imagegen_pb2.GenerateRequest(prompt="a", options=options()))
        generate(server, sdxl_request)
        with server.channel() as channel:
            models = imagegen_pb2_grpc.ImageGenServiceStub(channel).ListModels(
                imagegen_pb2.ListModelsRequest()
            )
        states = {m.name: m.state for m in models.models}
        assert states["sdxl-turbo"] == common_pb2.MODEL_STATE_READY
        assert states["sd-turbo"] == common_pb2.MODEL_STATE_AVAILABLE  # evicted, loads again on demand
    with serving(imagegen_service(tiny, preload=("sd-turbo",), memory_budget_gb=budget_gb)) as server:
        with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
            list(imagegen_pb2_grpc.ImageGenServiceStub(channel).Generate(sdxl_request, timeout=30))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "GPU budget" in caught.value.details()
        generate(server, imagegen_pb2.GenerateRequest(prompt="still serving", options=options()))


def test_a_failed_rerank_fails_only_its_own_request_of_the_batch(tiny, monkeypatch) -> None:
    """Re-ranking runs on the GPU thread for the whole batch; one member's CLIP failure must
    reach that member only."""
    from services.imagegen.models import ClipScorer, LoraLibrary, ModelStore
    from services.imagegen.params import ImageParams
    from services.imagegen.pipeline import ImageGenerator
    from services.imagegen.settings import ImageGenSettings
    from threegen.background import BackgroundRemover
    from threegen.errors import Unavailable
    from threegen.runtime.work import Reporter

    settings = ImageGenSettings.from_env({}, sd_turbo_model=str(tiny["sd-turbo"]))
    clip = ClipScorer(str(tiny["clip"]), "cpu")
    clip.load()
    real_scores = clip.scores

    def scores(prompt: str, images: torch.Tensor) -> list[float]:
        if prompt == "broken":
            raise RuntimeError("CUDA out of memory in CLIP")
        return real_scores(prompt, images)

    monkeypatch.setattr(clip, "scores", scores)
    generator = ImageGenerator(
        ModelStore(settings, "cpu"), LoraLibrary(""), clip, BackgroundRemover(), 0.5, 8
    )
    generator.batcher.last_batch_size = 2  # under load: the window gathers both requests
    outcomes: dict[str, object] = {}

    def run(prompt: str) -> None:
        params = ImageParams(
            prompt=prompt, seed=3, model="sd-turbo", steps=1, num_views=2, top_k=2, width=64, height=64
        )
        try:
            outcomes[prompt] = generator.generate(params, Reporter())
        except Unavailable as exc:
            outcomes[prompt] = exc

    threads = [threading.Thread(target=run, args=(p,)) for p in ("a chair", "broken")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    generator.batcher.stop()
    good, bad = outcomes["a chair"], outcomes["broken"]
    assert isinstance(bad, Unavailable) and "CLIP re-ranking failed" in str(bad)
    assert good.batch_size == 2 and len(good.views) == 2
    assert {v.candidate for v in good.views} == {0, 1} and any(v.clip_score != 0 for v in good.views)
