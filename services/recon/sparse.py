"""Sparse voxel tensors in plain torch: the operations TRELLIS-style models need, on any device.

TRELLIS and SAM 3D Objects run their structured-latent networks on sparse voxels through spconv
and flash-attn/xformers, CUDA libraries with no CPU path worth having. Everything those models
use is written here with gathers, scatters and torch's scaled_dot_product_attention:

- `SparseTensor`: features (N, ...) at integer coordinates (N, 4) = (batch, x, y, z), rows
  grouped by batch. Tensors derived from one another share a `spatial` cache (neighbour maps,
  window partitions, the index maps that undo a downsampling).
- `SubmanifoldConv3d`: spconv's SubMConv3d; weights in spconv's (out, kx, ky, kz, in) layout,
  output at the input's coordinates, out[p] = b + sum_k W[k] x[p + k - 1]; a 1x1 kernel is read
  the way spconv reads it (checked against spconv 2.3.8 on one thread: its CPU build gives
  different answers run to run with several threads).
- mean-pool downsampling by 2 and its nearest-neighbour inverse, subdivision into 8 children,
  per-sample group norm, full and windowed (Swin) attention over the voxels of each sample.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int64)  # kx, ky, kz order


@dataclass
class SparseTensor:
    feats: torch.Tensor
    coords: torch.Tensor  # (N, 4) int32: batch, x, y, z; sorted by batch
    spatial: dict = field(default_factory=dict)
    scale: int = 1  # voxel size relative to the finest grid of this forward pass

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_size(self) -> int:
        key = ("batch_size", self.scale)
        if key not in self.spatial:
            self.spatial[key] = int(self.coords[:, 0].max()) + 1 if len(self.coords) else 0
        return self.spatial[key]

    @property
    def batch(self) -> torch.Tensor:
        return self.coords[:, 0].long()

    def layout(self) -> list[slice]:
        """Row range of each sample (rows are grouped by batch index)."""
        key = ("layout", self.scale)
        if key not in self.spatial:
            counts = torch.bincount(self.batch, minlength=self.batch_size).tolist()
            starts = [0, *itertools.accumulate(counts)]
            self.spatial[key] = [slice(a, b) for a, b in itertools.pairwise(starts)]
        return self.spatial[key]

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        return SparseTensor(feats, self.coords, self.spatial, self.scale)

    def per_sample(self, values: torch.Tensor) -> torch.Tensor:
        """Broadcast (B, C) per-sample values to (N, C) per-voxel values."""
        return values[self.batch]


def _pack(coords: torch.Tensor, size: int) -> torch.Tensor:
    """One int64 key per (batch, x, y, z); coordinates may be -1..size-1 (shifted by one)."""
    c = coords.long()
    s = size + 2
    return ((c[:, 0] * s + (c[:, 1] + 1)) * s + (c[:, 2] + 1)) * s + (c[:, 3] + 1)


def neighbours(x: SparseTensor) -> torch.Tensor:
    """(27, N) row index of each voxel's neighbour at every 3x3x3 offset; N where there is none."""
    key = ("neighbours", x.scale)
    if key in x.spatial:
        return x.spatial[key]
    coords = x.coords.long()
    n = coords.shape[0]
    size = int(coords[:, 1:].max()) + 2 if n else 1
    keys = _pack(coords, size)
    sorted_keys, order = keys.sort()
    table = torch.full((len(OFFSETS), n), n, dtype=torch.long, device=coords.device)
    for k, offset in enumerate(OFFSETS.to(coords.device)):
        shifted = coords.clone()
        shifted[:, 1:] += offset
        query = _pack(shifted, size)
        position = torch.searchsorted(sorted_keys, query).clamp(max=max(n - 1, 0))
        found = sorted_keys[position] == query
        table[k] = torch.where(found, order[position], torch.full_like(position, n))
    x.spatial[key] = table
    return table


class SubmanifoldConv3d(nn.Module):
    """A 3x3x3 (or 1x1x1) convolution evaluated only at the active voxels, as spconv's SubMConv3d.

    Parameters are named `weight` (out, k, k, k, in) and `bias`, like spconv's, so TRELLIS
    checkpoints (`...conv.weight`) load unchanged when this sits under a `.conv` attribute.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        k = kernel_size
        self.kernel_size = k
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight.view(out_channels, -1), a=math.sqrt(5))

    def forward(self, x: SparseTensor) -> SparseTensor:
        feats = x.feats
        weight = self.weight.to(feats.dtype)
        if self.kernel_size == 1:
            # spconv computes 1x1 convolutions as features @ weight.view(in, out): the stored
            # (out, 1, 1, 1, in) tensor is read as (in, out). Checkpoints were trained that way.
            out = feats @ weight.reshape(weight.shape[-1], weight.shape[0])
        else:
            table = neighbours(x)
            padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
            out = feats.new_zeros(feats.shape[0], weight.shape[0])
            flat = weight.view(weight.shape[0], 27, weight.shape[-1])
            for k in range(27):
                out = out + padded[table[k]] @ flat[:, k].t()
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return x.replace(out)


class SparseConv3d(nn.Module):
    """TRELLIS's wrapper name: the convolution lives under `.conv`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.conv = SubmanifoldConv3d(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.conv(x)


class SparseLinear(nn.Linear):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseGroupNorm32(nn.GroupNorm):
    """Group norm over each sample's voxels, computed in fp32."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        out = torch.empty_like(x.feats)
        for rows in x.layout():
            part = x.feats[rows].float().t().unsqueeze(0)  # (1, C, n)
            weight = self.weight.float() if self.weight is not None else None
            bias = self.bias.float() if self.bias is not None else None
            normed = F.group_norm(part, self.num_groups, weight, bias, self.eps)
            out[rows] = normed.squeeze(0).t().to(x.dtype)
        return x.replace(out)


def downsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Pool each factor^3 block; remembers how to go back.

    As in TRELLIS (torch.scatter_reduce 'mean' onto zeros with include_self), the pooled value
    is sum / (count + 1): the weights were trained with it, so it is kept."""
    coords = x.coords.long().clone()
    coords[:, 1:] //= factor
    size = int(coords[:, 1:].max()) + 1
    code = ((coords[:, 0] * size + coords[:, 1]) * size + coords[:, 2]) * size + coords[:, 3]
    unique, inverse = torch.unique(code, return_inverse=True)
    feats = torch.zeros(unique.shape[0], x.feats.shape[1], device=x.device, dtype=x.dtype)
    feats = feats.scatter_reduce(
        0, inverse.unsqueeze(1).expand_as(x.feats), x.feats, reduce="mean", include_self=True
    )
    new_coords = torch.stack(
        [unique // size**3, (unique // size**2) % size, (unique // size) % size, unique % size], dim=1
    ).to(x.coords.dtype)
    scale = x.scale * factor
    x.spatial[("upsample", scale)] = (x.coords, inverse)
    return SparseTensor(feats, new_coords, x.spatial, scale)


def upsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Back to the coordinates the matching downsample came from, copying each parent's features."""
    entry = x.spatial.get(("upsample", x.scale))
    if entry is None:
        raise ValueError("upsample without a matching downsample")
    coords, inverse = entry
    return SparseTensor(x.feats[inverse], coords, x.spatial, x.scale // factor)


def subdivide(x: SparseTensor) -> SparseTensor:
    """Each voxel becomes its 8 children at twice the resolution, with the parent's features."""
    children = torch.tensor(list(itertools.product((0, 1), repeat=3)), device=x.device, dtype=x.coords.dtype)
    coords = x.coords.clone()
    coords[:, 1:] *= 2
    coords = coords.unsqueeze(1).repeat(1, 8, 1)
    coords[:, :, 1:] += children.unsqueeze(0)
    feats = x.feats.unsqueeze(1).expand(-1, 8, *x.feats.shape[1:]).flatten(0, 1)
    # A fresh spatial cache: the finer grid's neighbour maps differ; scales count down from here.
    return SparseTensor(feats, coords.flatten(0, 1), {}, 1)


def full_attention(x: SparseTensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Self-attention among the voxels of each sample. q, k, v: (N, H, D); returns (N, H, D)."""
    out = torch.empty_like(q)
    for rows in x.layout():
        qs, ks, vs = (t[rows].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out[rows] = F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)
    return out


def cross_attention(x: SparseTensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each sample's voxels attend to that sample's context. q: (N, H, D); k, v: (B, L, H, D)."""
    out = torch.empty_like(q)
    for b, rows in enumerate(x.layout()):
        qs = q[rows].transpose(0, 1).unsqueeze(0)
        out[rows] = F.scaled_dot_product_attention(
            qs, k[b : b + 1].transpose(1, 2), v[b : b + 1].transpose(1, 2)
        )[0].transpose(0, 1)
    return out


def window_partition(x: SparseTensor, window: int, shift: int):
    """Voxels grouped by window (after shifting coordinates by `shift`), padded to equal length.

    Returns (index (W, L) into the rows with N for padding, valid (W, L) mask)."""
    key = ("windows", x.scale, window, shift)
    if key in x.spatial:
        return x.spatial[key]
    coords = x.coords.long()
    shifted = (coords[:, 1:] + shift) // window
    extent = int(shifted.max()) + 1 if len(coords) else 1
    code = ((coords[:, 0] * extent + shifted[:, 0]) * extent + shifted[:, 1]) * extent + shifted[:, 2]
    order = torch.argsort(code, stable=True)
    unique, counts = torch.unique_consecutive(code[order], return_counts=True)
    longest = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order), device=coords.device) - torch.repeat_interleave(starts, counts)
    group = torch.repeat_interleave(torch.arange(len(unique), device=coords.device), counts)
    index = torch.full((len(unique), longest), len(order), dtype=torch.long, device=coords.device)
    index[group, slot] = order
    valid = index < len(order)
    x.spatial[key] = (index, valid)
    return index, valid


def windowed_attention(
    x: SparseTensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, shift: int
) -> torch.Tensor:
    """Self-attention within each (shifted) window of window^3 voxels, per sample."""
    index, valid = window_partition(x, window, shift)
    n, heads, _ = q.shape
    out = torch.empty_like(q)
    # Windows in batches so the padded (windows, heads, L, L) scores stay bounded.
    per_batch = max(1, (1 << 26) // max(1, heads * index.shape[1] ** 2))
    for start in range(0, index.shape[0], per_batch):
        idx = index[start : start + per_batch]
        mask = valid[start : start + per_batch]
        gather = idx.clamp(max=n - 1)
        qs, ks, vs = (t[gather].permute(0, 2, 1, 3) for t in (q, k, v))  # (W, H, L, D)
        attend = mask[:, None, None, :]
        result = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=attend).permute(0, 2, 1, 3)
        out[idx[mask]] = result[mask]
    return out
