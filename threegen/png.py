"""Fast PNG encoding for 8-bit RGB / RGBA arrays.

PIL's encoder spends 17-40 ms on one 512x512 image choosing a filter for every row; this
writer uses one fixed filter (Sub, good on photographs and renders) and zlib's RLE strategy
at level 1, at the size PIL's level 1 gives.

Large images are deflated in row stripes on several threads (zlib releases the GIL), the way
pigz does: each stripe is a raw deflate stream ended on a byte boundary with a sync flush and
primed with the previous stripe's last 32 KiB as its dictionary, so the concatenation is one
valid zlib stream whose size barely differs from a serial one. The Adler-32 of the whole
filtered image closes it.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {3: 2, 4: 6}  # channels -> PNG colour type (truecolour, truecolour + alpha)
STRIPE_BYTES = 128 * 1024  # below this a thread hand-off costs more than it saves
WINDOW = 32 * 1024  # deflate's history: the dictionary each stripe is primed with
WORKERS = min(8, os.cpu_count() or 1)
_POOL = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="png")  # threads start on use


def _chunk(kind: bytes, payload: bytes) -> list[bytes]:
    """A PNG chunk as parts, joined once with the rest of the file (no copy of the payload here)."""
    return [
        struct.pack(">I", len(payload)),
        kind,
        payload,
        struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind))),
    ]


def _deflate_stripe(data: memoryview, start: int, end: int, level: int, last: bool) -> bytes:
    compressor = zlib.compressobj(
        level,
        zlib.DEFLATED,
        -15,
        8,
        zlib.Z_RLE,
        **({"zdict": data[max(0, start - WINDOW) : start]} if start else {}),
    )
    body = compressor.compress(data[start:end])
    return body + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _zlib_stream(data: memoryview, level: int, stripes: int) -> bytes:
    if stripes <= 1:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
        return compressor.compress(data) + compressor.flush()
    bounds = [len(data) * i // stripes for i in range(stripes + 1)]
    parts = _POOL.map(
        lambda i: _deflate_stripe(data, bounds[i], bounds[i + 1], level, i == stripes - 1), range(stripes)
    )
    # zlib header: deflate, 32 KiB window, FLEVEL by level, FCHECK making it a multiple of 31
    flevel = 0 if level < 2 else (1 if level < 6 else (2 if level == 6 else 3))
    cmf, flg = 0x78, flevel << 6
    flg |= 31 - ((cmf << 8) | flg) % 31
    return bytes((cmf, flg)) + b"".join(parts) + struct.pack(">I", zlib.adler32(data))


def encode(pixels: np.ndarray, level: int = 1, threads: int | None = None) -> bytes:
    """(H, W, 3 or 4) uint8 -> PNG bytes; `threads` bounds the stripes (default: by size and cores)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in COLOR_TYPES:
        raise ValueError(f"expected (H, W, 3|4) uint8, got {pixels.shape} {pixels.dtype}")
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to its left
    filtered[:, 1 : channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1 :], dtype=np.uint8)
    raw = memoryview(filtered.reshape(-1))
    stripes = max(1, min(threads or WORKERS, filtered.nbytes // STRIPE_BYTES))
    data = _zlib_stream(raw, level, stripes)
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0)
    return b"".join([SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"IDAT", data), *_chunk(b"IEND", b"")])
