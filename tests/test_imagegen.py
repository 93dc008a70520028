"""imagegen over gRPC on tiny SD-Turbo / SDXL-Turbo checkpoints."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from tests.helpers import collect
from threegen.common.v1 import common_pb2
from threegen.errors import field_violations
from threegen.imagegen.v1 import imagegen_pb2, imagegen_pb2_grpc


def generate(server, request: imagegen_pb2.GenerateRequest):
    with server.channel() as channel:
        return collect(imagegen_pb2_grpc.ImageGenServiceStub(channel).Generate(request, timeout=60))


def test_seeded_images_repeat_and_steps_are_reported(stack) -> None:
    options = imagegen_pb2.ImageOptions(width=128, height=64, steps=3)
    request = imagegen_pb2.GenerateRequest(prompt="a red teapot", seed=123, options=options)
    files, result, progress = generate(stack.imagegen, request)
    again, _, _ = generate(stack.imagegen, request)
    assert result.seed == 123 and result.model == "sd-turbo"
    assert files["view_0.png"].sha256 == again["view_0.png"].sha256
    assert Image.open(io.BytesIO(files["view_0.png"].data)).size == (128, 64)
    steps = [p.message for p in progress if p.step == "denoise"]
    assert steps == ["step 1/3", "step 2/3", "step 3/3"]
    assert all(p.stage == common_pb2.STAGE_IMAGE for p in progress)


def test_unset_seed_is_random_and_returned(stack) -> None:
    options = imagegen_pb2.ImageOptions(width=64, height=64, steps=1)
    _, first, _ = generate(stack.imagegen, imagegen_pb2.GenerateRequest(prompt="a", options=options))
    _, second, _ = generate(stack.imagegen, imagegen_pb2.GenerateRequest(prompt="a", options=options))
    assert first.seed != second.seed


def test_sdxl_and_several_views(stack) -> None:
    options = imagegen_pb2.ImageOptions(
        model=imagegen_pb2.IMAGE_MODEL_SDXL_TURBO, width=64, height=64, steps=1, num_views=3, top_k=2
    )
    files, result, _ = generate(
        stack.imagegen, imagegen_pb2.GenerateRequest(prompt="a", seed=5, options=options)
    )
    assert result.model == "sdxl-turbo"
    assert sorted(files) == ["view_0.png", "view_1.png"]
    assert [v.rank for v in result.views] == [0, 1]
    assert {v.seed for v in result.views} <= {5, 6, 7}


def test_validate_only_generates_nothing(stack) -> None:
    request = imagegen_pb2.GenerateRequest(prompt="a", seed=9, validate_only=True)
    files, result, progress = generate(stack.imagegen, request)
    assert files == {} and progress == [] and result.seed == 9


def test_png_level_is_chosen_per_request_and_checked(stack) -> None:
    options = imagegen_pb2.ImageOptions(width=64, height=64, steps=1)
    sizes, decoded = {}, {}
    for level in (0, 9):
        request = imagegen_pb2.GenerateRequest(prompt="a vase", seed=3, options=options, png_level=level)
        data = generate(stack.imagegen, request)[0]["view_0.png"].data
        sizes[level], decoded[level] = len(data), Image.open(io.BytesIO(data)).tobytes()
    assert decoded[0] == decoded[9]  # lossless either way
    assert sizes[0] > 64 * 64 * 3 > sizes[9]  # stored: every pixel byte is in the file
    with pytest.raises(grpc.RpcError) as caught:
        generate(stack.imagegen, imagegen_pb2.GenerateRequest(prompt="a", options=options, png_level=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(caught.value)] == ["png_level"]
