"""XCube's sparse-voxel VAE (`xcube.models.autoencoder.Model`) in plain torch, decode path only.

XCube (nv-tlabs, NVIDIA Source Code License: non-commercial use) runs on fVDB, which is CUDA-only.
This module rebuilds the VAE with the published state-dict names and shapes, so the `state_dict` of
a `*_vae/last.ckpt` (or the `vae.*` part of a diffusion checkpoint) loads with `strict=True`:

- `encoder.mix_fc`: Linear(33 [+3 normal] [+1 intensity] -> c_dim). Kept for strict loading only.
- `unet.*`: the StructPredictionNet: `pre_conv` (1x1), `encoders.Enc{i}`, `pre_kl_bottleneck.*`
  (encoder side, loading only), then what decoding runs: `post_kl_bottleneck.*`, `decoders.Dec-{k}`,
  `struct_convs.Struct-{k}` and `normal_head` (optionally `semantic_head`).
  Supported configuration: the one the published objaverse VAEs use (use_residual false, is_add_dec
  false, use_attention false, pooling on every level); anything else raises NotImplementedError.

Decoding (what XCube's `StructPredictionNet.decode(..., is_testing=True)` does):
the latent goes through the two post-KL double-conv blocks; then, coarse to fine, at each level a
struct head (GroupNorm-conv3-ReLU, 1x1 conv to 2 logits) decides which voxels exist (logit 0 > logit
1); the existing voxels are subdivided into their 8 children (nearest: children copy the parent's
features) and the next decoder block runs on the children; after the finest struct head the grid is
pruned to its existing voxels and the normal head (3 raw, unnormalised channels) runs on it.

Grid convention (integer coordinates):

- `SparseTensor.coords` rows are (batch, i, j, k), int32; i, j, k may be negative (the coarse latent
  grid is the dense 16^3 block ijk in [-8, 8)).
- Level `l` (0 = the latent level, L-1 = finest, L = `num_blocks` = the config's tree_depth) has
  voxel size `voxel_size * 2 ** (L - 1 - l)`, where `voxel_size` is the VAE config's (finest) voxel
  size. XCube's grids put the origin at half a voxel (`build_hash_tree`: origins = voxel_size / 2 at
  every depth), so the centre of voxel ijk at level l is `world = (ijk + 0.5) * voxel_size_l`
  (`XCubeVAE.voxel_centres`). A voxel ijk of level l has the 8 children `2 * ijk + {0, 1}^3` at level
  l + 1; the parent of a fine ijk is `floor(ijk / 2)` (floor division, also for negatives).
  Coarse VAE: voxel 0.0078125, L = 4 -> latent voxel 0.0625, ijk in [-8, 8) -> finest ijk in
  [-64, 64), centres in [-0.5, 0.5]. Fine VAE: voxel 0.001953125, L = 3 -> latent voxel 0.0078125,
  which is the coarse VAE's finest grid, ijk unchanged; finest ijk in [-256, 256).
- Row order: the latent level keeps the caller's rows; every later level is sorted by
  (batch, i, j, k). fVDB orders voxels by its tree instead; the voxel sets are the same.

Convolution weights keep fVDB's logical shape (out, in, k0, k1, k2) (a 1x1x1 kernel is a plain
(out, in) matrix), so checkpoints load without permutation. Axis mapping, read from fVDB's 2024 source
(ff3127c1): its kernel map enumerates offsets with the one added to i outermost and the one added to
k innermost, and its conv permutes the weight to (k2, k1, k0, in, out) before flattening the kernel
index, so **k2 <-> i, k1 <-> j, k0 <-> k** (its dense backend agrees: it feeds the grid to
`F.conv3d` as (B, C, k, j, i)). Hence, with d = (di, dj, dk) in {-1, 0, 1}^3:
`out[p] = sum_d W[:, :, dk + 1, dj + 1, di + 1] @ x[p + d]` (no bias where followed by GroupNorm).
No fVDB build could run here to confirm this numerically.

GroupNorm is per sample (over that sample's voxels), as fVDB's; a ConvBlock whose channel count is
below `num_groups` uses one group. The training-time `unstable_cutoff` is applied only with
`decode(..., is_testing=False)`; XCube's sampler decodes with is_testing=True.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from services.recon.sparse import SparseTensor

# (di, dj, dk) in itertools.product order: row r of the neighbour table is offset r.
_OFFSETS = torch.tensor([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
_CHILDREN = torch.tensor([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)])
_NEIGHBOURS_KEY = "xcube_neighbours"

# -- configuration ----------------------------------------------------------------------------------


def _plain(hparams) -> dict:
    """A plain nested dict from a dict or an OmegaConf config (interpolations resolved)."""
    if isinstance(hparams, Mapping) and not hasattr(hparams, "_get_node"):
        return dict(hparams)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(hparams, resolve=True)  # type: ignore[return-value]


def _resolve(value, root: dict):
    """Resolves a bare `${key}` / `${a.b}` string against the top level (plain dicts are not resolved)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{([\w.]+)\}", value.strip())
        if match:
            node = root
            for part in match.group(1).split("."):
                node = node[part]
            return node
    return value


def vae_args(hparams) -> dict:
    """The constructor arguments XCube's autoencoder Model derives from its merged config."""
    h = _plain(hparams)
    unet = h.get("network", {}).get("unet", {})
    target = unet.get("target", "StructPredictionNet")
    if target != "StructPredictionNet":
        raise NotImplementedError(f"VAE network {target!r}")
    params = {k: _resolve(v, h) for k, v in (unet.get("params") or {}).items()}
    supervision = h.get("supervision") or {}
    if h.get("use_input_semantic") or h.get("use_input_color"):
        raise NotImplementedError("XCube VAE with semantic or colour input")
    if h.get("network", {}).get("encoder", {}).get("c_dim") is None:
        raise ValueError("the VAE config has no network.encoder.c_dim")
    encoder_in = 3 + 3 * 2 * 5  # raw xyz plus sin/cos at 5 frequencies
    encoder_in += 3 if h.get("use_input_normal") else 0
    encoder_in += 1 if h.get("use_input_intensity") else 0
    voxel_size = h.get("voxel_size", 1.0)
    if isinstance(voxel_size, (list, tuple)):
        voxel_size = voxel_size[0]
    neck_bound = params.get("neck_bound", 4)
    if isinstance(neck_bound, int):
        neck_bound = [neck_bound] * 3
    return {
        "in_channels": int(params.get("in_channels", h["network"]["encoder"]["c_dim"])),
        "num_blocks": int(_resolve(params.get("num_blocks", h.get("tree_depth")), h)),
        "f_maps": int(params.get("f_maps", 64)),
        "order": str(params.get("order", "gcr")),
        "num_groups": int(params.get("num_groups", 8)),
        "pooling_level": list(params.get("pooling_level", [])),
        "neck_dense_type": str(params.get("neck_dense_type", "UNCHANGED")),
        "neck_bound": [int(b) for b in neck_bound],
        "use_residual": bool(params.get("use_residual", True)),
        "is_add_dec": bool(params.get("is_add_dec", True)),
        "use_attention": bool(params.get("use_attention", False)),
        "unstable_cutoff": bool(params.get("unstable_cutoff", False)),
        "unstable_cutoff_threshold": float(params.get("unstable_cutoff_threshold", 0.5)),
        "cut_ratio": float(h.get("cut_ratio", 1)),
        "with_normal_branch": float(supervision.get("normal_weight", 0.0) or 0.0) > 0,
        "with_semantic_branch": float(supervision.get("semantic_weight", 0.0) or 0.0) > 0,
        "num_semantic_classes": int(params.get("num_semantic_classes", 23)),
        "encoder_in": encoder_in,
        "c_dim": int(h["network"]["encoder"]["c_dim"]),
        "voxel_size": float(voxel_size),
    }


# -- sparse helpers ---------------------------------------------------------------------------------


def grid_from_ijk(ijk: torch.Tensor, feats: torch.Tensor, batch: int = 0) -> SparseTensor:
    """A one-sample SparseTensor at integer voxel coordinates ijk (N, 3)."""
    index = torch.full((ijk.shape[0], 1), batch, dtype=torch.int32, device=ijk.device)
    return SparseTensor(feats, torch.cat([index, ijk.to(torch.int32)], dim=1), {})


def ijk_of(grid: SparseTensor) -> torch.Tensor:
    """The (N, 3) integer voxel coordinates of a SparseTensor (its batch column dropped)."""
    return grid.coords[:, 1:].long()


def _keys(coords: torch.Tensor, low: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """One int64 per (batch, i, j, k) row, given per-axis lower bounds and extents."""
    c = coords.long() - low
    return ((c[:, 0] * size[1] + c[:, 1]) * size[2] + c[:, 2]) * size[3] + c[:, 3]


def _neighbour_table(x: SparseTensor) -> torch.Tensor:
    """(27, N): row of each voxel's neighbour at offset r of _OFFSETS, N where it is absent."""
    key = (_NEIGHBOURS_KEY, x.scale, x.coords.shape[0])  # tensors of other grids may share `spatial`
    if key in x.spatial:
        return x.spatial[key]
    coords = x.coords.long()
    n = coords.shape[0]
    table = torch.full((27, n), n, dtype=torch.long, device=coords.device)
    if n:
        low = coords.min(0).values - torch.tensor([0, 1, 1, 1], device=coords.device)
        size = coords.max(0).values - low + torch.tensor([1, 2, 2, 2], device=coords.device)
        keys = _keys(coords, low, size)
        sorted_keys, order = keys.sort()
        for r, offset in enumerate(_OFFSETS.to(coords.device)):
            shifted = coords.clone()
            shifted[:, 1:] += offset
            query = _keys(shifted, low, size)
            position = torch.searchsorted(sorted_keys, query).clamp(max=n - 1)
            found = sorted_keys[position] == query
            table[r] = torch.where(found, order[position], torch.full_like(position, n))
    x.spatial[key] = table
    return table


def _sorted(feats: torch.Tensor, coords: torch.Tensor) -> SparseTensor:
    """A fresh SparseTensor with rows sorted by (batch, i, j, k)."""
    if coords.shape[0]:
        low = coords.long().min(0).values
        size = coords.long().max(0).values - low + 1
        order = _keys(coords, low, size).argsort()
        feats, coords = feats[order], coords[order]
    return SparseTensor(feats, coords.to(torch.int32), {})


def prune(x: SparseTensor, mask: torch.Tensor) -> SparseTensor:
    """Keeps the voxels where mask is true (fVDB's UpsamplingNearest(1) with a mask)."""
    return SparseTensor(x.feats[mask], x.coords[mask], {})


def subdivide_masked(x: SparseTensor, mask: torch.Tensor | None = None) -> SparseTensor:
    """Each (masked) voxel becomes its 8 children 2 * ijk + {0,1}^3, which copy its features."""
    if mask is not None:
        x = prune(x, mask)
    children = _CHILDREN.to(device=x.device, dtype=x.coords.dtype)
    coords = x.coords.unsqueeze(1).repeat(1, 8, 1)
    coords[:, :, 1:] = coords[:, :, 1:] * 2 + children
    feats = x.feats.unsqueeze(1).expand(-1, 8, -1).reshape(-1, x.feats.shape[1])
    return _sorted(feats, coords.reshape(-1, 4))


# -- layers (parameter names as fVDB's) -------------------------------------------------------------


class FvdbSparseConv3d(nn.Module):
    """fVDB's stride-1 SparseConv3d on one grid: weight (out, in, k0, k1, k2) or (out, in) for 1x1x1.

    A 3x3x3 kernel reads out[p] = sum_d W[:, :, dk + 1, dj + 1, di + 1] @ x[p + (di, dj, dk)]
    (k2 <-> i, k0 <-> k; see the module docstring); the output grid is the input grid.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if kernel_size not in (1, 3):
            raise NotImplementedError(f"kernel size {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        shape = (out_channels, in_channels) + ((kernel_size,) * 3 if kernel_size > 1 else ())
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(in_channels * kernel_size**3)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        feats = x.feats
        weight = self.weight.to(feats.dtype)
        if self.kernel_size == 1:
            out = feats @ weight.t()
        else:
            table = _neighbour_table(x)
            # (out, in, k0, k1, k2) -> (27, in, out) with flat index (di+1)*9 + (dj+1)*3 + (dk+1)
            flat = weight.permute(4, 3, 2, 1, 0).reshape(27, self.in_channels, self.out_channels)
            padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
            out = feats.new_zeros(feats.shape[0], self.out_channels)
            n = feats.shape[0]
            for r in range(27):
                rows = table[r]
                if n and bool((rows < n).any()):
                    out = out + padded[rows] @ flat[r]
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return x.replace(out)


class SampleGroupNorm(nn.GroupNorm):
    """fVDB's GroupNorm: torch group norm over each sample's voxels (empty samples skipped)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        feats = x.feats
        out = torch.empty_like(feats)
        if feats.shape[0] == 0:
            return x.replace(out)
        batch = x.coords[:, 0].long()
        for b in torch.unique(batch).tolist():
            rows = (batch == b).nonzero().squeeze(1)
            part = feats[rows].t().unsqueeze(0)
            normed = F.group_norm(part, self.num_groups, self.weight, self.bias, self.eps)
            out[rows] = normed.squeeze(0).t()
        return x.replace(out)


class SparseReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.relu(x.feats))


class ConvBlock(nn.Sequential):
    """XCube's ConvBlock: modules named GroupNorm / Conv / ReLU / SiLU in `order` (e.g. 'gcr')."""

    def __init__(self, in_channels: int, out_channels: int, order: str, num_groups: int):
        super().__init__()
        for position, char in enumerate(order):
            if char == "r":
                self.add_module("ReLU", SparseReLU())
            elif char == "s":
                self.add_module("SiLU", _SparseSiLU())
            elif char == "c":
                conv = FvdbSparseConv3d(in_channels, out_channels, 3, bias="g" not in order)
                self.add_module("Conv", conv)
            elif char == "g":
                channels = in_channels if position < order.index("c") else out_channels
                groups = 1 if channels < num_groups else num_groups
                self.add_module("GroupNorm", SampleGroupNorm(groups, channels, affine=True))
            else:
                raise NotImplementedError(f"ConvBlock order {order!r}")


class _SparseSiLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.silu(x.feats))


class SparseHead(nn.Sequential):
    """ConvBlock (channels kept) then a 1x1 conv with bias."""

    def __init__(self, in_channels: int, out_channels: int, order: str, num_groups: int):
        super().__init__()
        self.add_module("SingleConv", ConvBlock(in_channels, in_channels, order, num_groups))
        self.add_module("OutConv", FvdbSparseConv3d(in_channels, out_channels, 1, bias=True))


class SparseDoubleConv(nn.Sequential):
    """Two ConvBlocks; the encoder form halves the first block's width (not below its input's)
    and is preceded by a parameter-free max pool, not run here."""

    def __init__(self, in_channels: int, out_channels: int, order: str, num_groups: int, encoder: bool):
        super().__init__()
        if encoder:
            mid = max(out_channels // 2, in_channels)
            first, second = (in_channels, mid), (mid, out_channels)
        else:
            first, second = (in_channels, out_channels), (out_channels, out_channels)
        self.add_module("SingleConv1", ConvBlock(*first, order, num_groups))
        self.add_module("SingleConv2", ConvBlock(*second, order, num_groups))


class StructPredictionNet(nn.Module):
    """XCube's sparse structure U-Net (the supported configuration), attribute order as upstream."""

    def __init__(self, a: dict):
        super().__init__()
        if a["use_residual"] or a["is_add_dec"] or a["use_attention"]:
            raise NotImplementedError("StructPredictionNet with residual blocks, is_add_dec or attention")
        blocks = a["num_blocks"]
        if a["pooling_level"] and sorted(a["pooling_level"]) != list(range(blocks)):
            raise NotImplementedError("anisotropic pooling levels")
        order, groups = a["order"], a["num_groups"]
        widths = [a["in_channels"]] + [a["f_maps"] * 2**k for k in range(blocks)]
        self.widths = widths
        self.num_blocks = blocks
        self.latent_channels = int(widths[-1] / a["cut_ratio"])
        self.unstable_cutoff = a["unstable_cutoff"]
        self.unstable_cutoff_threshold = a["unstable_cutoff_threshold"]
        self.voxel_bound = [2 * b for b in a["neck_bound"]]

        self.encoders = nn.ModuleList()
        self.pre_kl_bottleneck = nn.ModuleList()
        self.post_kl_bottleneck = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.struct_convs = nn.ModuleList()
        # registered after the (then empty) ModuleLists, as upstream: same state-dict key order
        self.pre_conv = FvdbSparseConv3d(a["in_channels"], a["in_channels"], 1, bias=True)

        def double(cin: int, cout: int, encoder: bool = False) -> SparseDoubleConv:
            return SparseDoubleConv(cin, cout, order, groups, encoder)

        for i in range(blocks):
            self.encoders.add_module(f"Enc{i}", double(widths[i], widths[i + 1], True))
        top, latent = widths[-1], self.latent_channels
        self.pre_kl_bottleneck.add_module("pre_kl_bottleneck_0", double(top, top))
        self.pre_kl_bottleneck.add_module("pre_kl_bottleneck_1", double(top, latent * 2))
        self.post_kl_bottleneck.add_module("post_kl_bottleneck_0", double(latent, top))
        self.post_kl_bottleneck.add_module("post_kl_bottleneck_1", double(top, top))
        for level in range(-1, -blocks - 1, -1):
            self.struct_convs.add_module(f"Struct{level}", SparseHead(widths[level], 2, order, groups))
            if level < -1:
                self.decoders.add_module(f"Dec{level}", double(widths[level + 1], widths[level]))
        self.with_normal_branch = a["with_normal_branch"]
        if self.with_normal_branch:
            self.normal_head = SparseHead(widths[1], 3, order, groups)
        self.with_semantic_branch = a["with_semantic_branch"]
        if self.with_semantic_branch:
            self.semantic_head = SparseHead(widths[1], a["num_semantic_classes"], order, groups)


# -- the model --------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    """XCube's point encoder; only its parameters (for strict loading)."""

    def __init__(self, in_features: int, c_dim: int):
        super().__init__()
        self.mix_fc = nn.Linear(in_features, c_dim)


@dataclass
class VAEDecoded:
    """Decoder output. `levels[l]`: the existing voxels of level l (0 = latent level, coarse to
    fine) with their 2 struct logits as feats; `grid`: the finest existing voxels with the last
    decoder features (f_maps channels); `normals`/`semantics`: per row of `grid`, raw head outputs."""

    levels: list[SparseTensor]
    grid: SparseTensor
    normals: torch.Tensor
    semantics: torch.Tensor | None = None
    voxel_sizes: list[float] = field(default_factory=list)


class XCubeVAE(nn.Module):
    """XCube's autoencoder Model (state: `encoder.mix_fc.*`, `unet.*`); `decode` runs the decoder."""

    def __init__(self, hparams):
        super().__init__()
        self.args = vae_args(hparams)
        self.encoder = _Encoder(self.args["encoder_in"], self.args["c_dim"])
        self.unet = StructPredictionNet(self.args)

    @property
    def latent_channels(self) -> int:
        return self.unet.latent_channels

    @property
    def num_levels(self) -> int:
        return self.unet.num_blocks

    def voxel_size(self, level: int) -> float:
        """Voxel size of level `level` (0 = latent, num_levels - 1 = finest = the config's)."""
        return self.args["voxel_size"] * 2 ** (self.num_levels - 1 - level)

    def voxel_centres(self, grid: SparseTensor, level: int = -1) -> torch.Tensor:
        """World-space voxel centres (N, 3): (ijk + 0.5) * voxel size of that level."""
        level = level % self.num_levels
        return (grid.coords[:, 1:].double() + 0.5) * self.voxel_size(level)

    def latent_ijk(self, device=None) -> torch.Tensor:
        """The dense latent block of a HAND_CRAFTED neck: ijk in [-b, b)^3 (b = neck_bound), i-major."""
        b = self.args["neck_bound"]
        axes = [torch.arange(-n, n, device=device) for n in b]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    @torch.no_grad()
    def decode(self, latent: SparseTensor, is_testing: bool = True) -> VAEDecoded:
        net = self.unet
        if latent.feats.shape[1] != self.latent_channels:
            got = latent.feats.shape[1]
            raise ValueError(f"latent has {got} channels, the VAE takes {self.latent_channels}")
        x = SparseTensor(latent.feats, latent.coords.to(torch.int32), {})
        for block in net.post_kl_bottleneck:
            x = block(x)
        batches = max(x.batch_size, 1)
        levels: list[SparseTensor] = []
        mask = None
        decoders = list(net.decoders)  # named children (Dec-2, ...): not indexable by position
        for level, head in enumerate(net.struct_convs):
            if level > 0:
                x = decoders[level - 1](subdivide_masked(x, mask))
            logits = head(x).feats
            mask = logits[:, 0] > logits[:, 1]
            if level > 0 and net.unstable_cutoff and not is_testing:
                dense = math.prod(b * 2**level for b in net.voxel_bound)
                if float(mask.sum()) / (dense * batches) > net.unstable_cutoff_threshold:
                    mask = torch.zeros_like(mask)
            levels.append(SparseTensor(logits[mask], x.coords[mask], {}))
        x = prune(x, mask)
        normals = x.feats.new_zeros(0, 3)
        semantics = None
        if net.with_normal_branch and x.feats.shape[0]:
            normals = net.normal_head(x).feats
        if net.with_semantic_branch and x.feats.shape[0]:
            semantics = net.semantic_head(x).feats
        sizes = [self.voxel_size(level) for level in range(self.num_levels)]
        return VAEDecoded(levels, x, normals, semantics, sizes)
