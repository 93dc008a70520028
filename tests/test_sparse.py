"""services/recon/sparse.py against spconv (the library TRELLIS's checkpoints were trained with)
and against brute force; and the published TRELLIS architectures' sizes (meta device)."""

from __future__ import annotations

import pytest
import torch

from services.recon import sparse as sp


def random_voxels(count: int, extent: int, batches: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batches):
        cells = torch.unique(torch.randint(0, extent, (count, 3), generator=generator), dim=0)
        rows.append(torch.cat([torch.full((len(cells), 1), b), cells], dim=1))
    return torch.cat(rows).int()


@pytest.mark.parametrize("kernel", [3, 1])
def test_submanifold_conv_equals_spconv(kernel: int) -> None:
    spconv = pytest.importorskip("spconv.pytorch")
    coords = random_voxels(300, 12, batches=2)
    feats = torch.randn(len(coords), 6)
    reference = spconv.SubMConv3d(6, 5, kernel, bias=True, algo=spconv.ConvAlgo.Native).train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU kernels race with several threads
    try:
        with torch.no_grad():
            expected = reference(spconv.SparseConvTensor(feats, coords, [12, 12, 12], 2)).features
    finally:
        torch.set_num_threads(threads)
    ours = sp.SubmanifoldConv3d(6, 5, kernel)
    ours.load_state_dict(reference.state_dict())
    with torch.no_grad():
        got = ours(sp.SparseTensor(feats, coords)).feats
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_downsample_then_upsample_returns_to_the_same_voxels() -> None:
    coords = random_voxels(400, 16, batches=2)
    x = sp.SparseTensor(torch.randn(len(coords), 3), coords)
    coarse = sp.downsample(x)
    assert (coarse.coords[:, 1:] < 8).all() and len(coarse.coords) < len(coords)
    # TRELLIS's pooling: sum / (count + 1) per parent.
    parent = {tuple(c.tolist()): i for i, c in enumerate(coarse.coords)}
    key = [parent[(int(c[0]), int(c[1]) // 2, int(c[2]) // 2, int(c[3]) // 2)] for c in coords]
    index = torch.tensor(key)
    sums = torch.zeros_like(coarse.feats).index_add_(0, index, x.feats)
    counts = torch.bincount(index, minlength=len(coarse.coords)).unsqueeze(1)
    assert torch.allclose(coarse.feats, sums / (counts + 1), atol=1e-6)
    back = sp.upsample(coarse)
    assert torch.equal(back.coords, coords)
    assert torch.allclose(back.feats, coarse.feats[index])


def test_windowed_attention_equals_attention_within_each_window() -> None:
    coords = random_voxels(250, 16, batches=2, seed=3)
    n, heads, dim = len(coords), 2, 4
    q, k, v = (torch.randn(n, heads, dim) for _ in range(3))
    x = sp.SparseTensor(torch.zeros(n, 1), coords)
    got = sp.windowed_attention(x, q, k, v, window=8, shift=4)
    window = torch.cat([coords[:, :1], (coords[:, 1:] + 4) // 8], dim=1)
    for key in torch.unique(window, dim=0):
        rows = (window == key).all(dim=1).nonzero().squeeze(1)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1)
        ).transpose(0, 1)
        assert torch.allclose(got[rows], expected, atol=1e-5)


def test_published_trellis_models_have_the_published_sizes() -> None:
    from services.recon.families.trellis.networks import CLASSES
    from services.recon.families.trellis.published import image_large, text

    def params(spec) -> float:
        _, cls, args = spec
        with torch.device("meta"):
            model = CLASSES[cls](**args)
        return sum(p.numel() for p in model.parameters()) / 1e6

    _, models = image_large()
    # Parameter counts of the published checkpoints (their payload sizes match these, fp16 torso).
    assert params(models["sparse_structure_flow_model"]) == pytest.approx(555.5, abs=0.5)
    assert params(models["slat_flow_model"]) == pytest.approx(600.4, abs=0.5)
    assert params(models["sparse_structure_decoder"]) == pytest.approx(73.7, abs=0.2)
    assert params(models["slat_decoder_mesh"]) == pytest.approx(90.9, abs=0.2)
    assert params(models["slat_decoder_gs"]) == pytest.approx(85.4, abs=0.2)
    _, xlarge = text("xlarge")
    total = params(xlarge["sparse_structure_flow_model"]) + params(xlarge["slat_flow_model"])
    assert total == pytest.approx(2048.8, abs=2)  # README: "2.0B"
