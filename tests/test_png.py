"""The PNG writer round-trips exactly through an independent decoder (PIL)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from threegen.images import encode_png
from threegen.png import encode


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    channels=st.sampled_from([3, 4]),
    seed=st.integers(0, 99),
    level=st.sampled_from([0, 1, 9]),
)
def test_round_trip_is_exact(height: int, width: int, channels: int, seed: int, level: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode(pixels, level)))
    assert decoded.mode == ("RGB" if channels == 3 else "RGBA")
    assert np.array_equal(np.asarray(decoded), pixels)


def test_pil_images_of_each_mode() -> None:
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgba)))), np.asarray(rgba))
    grey = Image.new("L", (5, 5), 77)
    assert np.asarray(Image.open(io.BytesIO(encode_png(grey))))[0, 0].tolist() == [77, 77, 77]


def test_smooth_images_compress() -> None:
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    assert len(encode(gradient)) < gradient.nbytes / 20


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode(np.zeros((4, 4, 3), dtype=np.float32))


@pytest.mark.parametrize("level", [0, 1, 9])
def test_striped_encoding_is_one_valid_stream(level: int) -> None:
    """Stripes deflated on several threads join into one zlib stream with a correct Adler-32,
    about the size a serial encoder gives."""
    rng = np.random.default_rng(level)
    smooth = np.tile(np.linspace(0, 255, 600, dtype=np.uint8)[None, :, None], (500, 1, 4))
    smooth[200:300] = rng.integers(0, 256, (100, 600, 4), dtype=np.uint8)  # noise across a stripe joint
    serial, striped = encode(smooth, level, threads=1), encode(smooth, level, threads=5)
    assert striped != serial  # really took the striped path
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(striped))), smooth)
    idat = striped[8 + 25 + 8 : -12 - 4]
    assert zlib.decompress(idat)[:1] == b"\x01"  # zlib itself checks the joined stream's Adler-32
    assert len(striped) < len(serial) * 1.01 + 64
