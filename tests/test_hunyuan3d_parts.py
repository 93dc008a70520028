"""Hunyuan3D-2 parts that need no model: the torch rasterizer and the memory-profile arithmetic."""

from __future__ import annotations

import pytest
import torch

from services.recon import rasterizer
from services.recon.families.hunyuan3d import profiles
from services.recon.families.placement import Component, Mode


def clip(points: list[tuple[float, float, float]], w: float = 1.0) -> torch.Tensor:
    """NDC points -> (1, V, 4) clip coordinates with a given w (perspective-divided back by it)."""
    return torch.tensor([[x * w, y * w, z * w, w] for x, y, z in points], dtype=torch.float32)[None]


def test_square_covers_its_pixels_and_the_nearer_face_wins() -> None:
    # Two triangles make a square over NDC [-0.5, 0.5]^2 at depth 0.5; a third, nearer (z=-0.5),
    # covers the lower-left half of it.
    pos = clip([(-0.5, -0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, 0.5), (-0.5, 0.5, 0.5), (-0.5, -0.5, -0.5),
                (0.5, -0.5, -0.5), (-0.5, 0.5, -0.5)])  # fmt: skip
    tri = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]], dtype=torch.int32)
    findices, bary = rasterizer.rasterize(pos, tri, (64, 64))
    assert findices.shape == (64, 64) and findices.dtype == torch.int32
    covered = findices > 0
    # The square spans (x * 0.5 + 0.5) * 63 + 0.5 = 16.25 .. 47.75 in pixel units: 32 x 32 centres.
    assert int(covered.sum()) == 32 * 32
    assert not covered[:16].any() and not covered[:, :16].any() and not covered[48:].any()
    assert set(findices[covered].unique().tolist()) == {1, 2, 3}
    assert findices[20, 20] == 3  # lower-left: the nearer triangle
    assert findices[44, 44] in (1, 2)  # upper-right: only the square
    assert torch.allclose(bary[covered].sum(dim=1), torch.ones(int(covered.sum())), atol=1e-5)
    assert (bary[~covered] == 0).all()
    depth = rasterizer.interpolate(pos[:, :, 2:3], findices, bary, tri)[0, ..., 0]
    assert torch.allclose(depth[findices == 3], torch.tensor(-0.5), atol=1e-5)
    assert torch.allclose(depth[(findices == 1) | (findices == 2)], torch.tensor(0.5), atol=1e-5)


def test_barycentrics_are_perspective_correct() -> None:
    # One triangle whose corners have different w: the attribute interpolated must be linear in
    # 3D (divided by w), not in screen space.
    w = torch.tensor([1.0, 4.0, 2.0])
    ndc = torch.tensor([[-0.9, -0.9, 0.1], [0.9, -0.9, 0.1], [0.0, 0.9, 0.1]])
    pos = torch.cat([ndc * w[:, None], w[:, None]], dim=1)[None]
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    findices, bary = rasterizer.rasterize(pos, tri, (32, 48))
    assert findices.shape == (32, 48)
    inside = findices > 0
    # Recompute screen-space barycentrics at each covered pixel centre and correct them by 1/w.
    rows, cols = inside.nonzero(as_tuple=True)
    sx = (ndc[:, 0] * 0.5 + 0.5) * 47 + 0.5
    sy = (ndc[:, 1] * 0.5 + 0.5) * 31 + 0.5
    px, py = cols.float() + 0.5, rows.float() + 0.5
    area = (sx[2] - sx[0]) * (sy[1] - sy[0]) - (sx[1] - sx[0]) * (sy[2] - sy[0])
    beta = ((sx[2] - sx[0]) * (py - sy[0]) - (px - sx[0]) * (sy[2] - sy[0])) / area
    gamma = ((px - sx[0]) * (sy[1] - sy[0]) - (sx[1] - sx[0]) * (py - sy[0])) / area
    screen = torch.stack([1 - beta - gamma, beta, gamma], dim=1)
    corrected = screen / w
    corrected = corrected / corrected.sum(dim=1, keepdim=True)
    assert torch.allclose(bary[inside], corrected, atol=1e-4)
    assert not torch.allclose(bary[inside], screen, atol=1e-2)  # the correction matters here


def test_faces_behind_the_camera_and_off_screen_draw_nothing() -> None:
    pos = clip([(-0.5, -0.5, -3.0), (0.5, -0.5, -3.0), (0.0, 0.5, -3.0), (2.0, 2.0, 0.0), (3.0, 2.0, 0.0),
                (2.0, 3.0, 0.0)])  # fmt: skip
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    findices, _ = rasterizer.rasterize(pos, tri, (16, 16))
    assert not (findices > 0).any()


def test_many_faces_are_rasterized_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rasterizer, "CANDIDATES_PER_CHUNK", 50)  # forces dozens of chunks
    grid = torch.linspace(-0.9, 0.9, 11)
    points, faces = [], []
    for i in range(10):
        for j in range(10):
            base = len(points)
            points += [(grid[i], grid[j], 0.0), (grid[i + 1], grid[j], 0.0), (grid[i], grid[j + 1], 0.0)]
            faces.append([base, base + 1, base + 2])
    pos = clip([(float(x), float(y), z) for x, y, z in points])
    chunked, _ = rasterizer.rasterize(pos, torch.tensor(faces, dtype=torch.int32), (40, 40))
    monkeypatch.setattr(rasterizer, "CANDIDATES_PER_CHUNK", 1 << 23)
    whole, _ = rasterizer.rasterize(pos, torch.tensor(faces, dtype=torch.int32), (40, 40))
    assert torch.equal(chunked, whole) and len(whole.unique()) == 101


def full_size_components(resting: Mode) -> dict[str, Component]:
    """The published v2-0 shape stack at full size on the meta device (no memory used)."""
    pytest.importorskip("hy3dgen")
    from services.recon.families.hunyuan3d.compat import ensure_importable
    from services.recon.families.hunyuan3d.published import V2_0_SHAPE_CONFIG

    ensure_importable()
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    components = {}
    with torch.device("meta"):
        for name in ("conditioner", "model", "vae"):
            module = instantiate_from_config(V2_0_SHAPE_CONFIG[name]).to(torch.float16)
            components[name] = Component(name, module, torch.device("cuda"), resting)
    return components


def test_profiles_trade_memory_monotonically_on_the_published_model() -> None:
    components = full_size_components(Mode.SWAP)
    # fp16 parameter bytes of the published v2-0 shape stack (DINOv2-giant, DiT, ShapeVAE).
    assert components["conditioner"].bytes / 2**30 == pytest.approx(2.12, abs=0.02)
    assert components["model"].bytes / 2**30 == pytest.approx(2.07, abs=0.02)
    assert components["vae"].bytes / 2**30 == pytest.approx(0.40, abs=0.02)
    for name in ("conditioner", "model"):  # streaming holds far less than the whole component
        assert components[name].gpu_bytes(Mode.STREAM) < components[name].bytes / 8
    peaks = [profiles.estimate(p, components, 384, texture=False).peak_bytes for p in range(1, 6)]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] > 2 * peaks[-1]
    assert profiles.estimate(1, components, 384, texture=False).resident_bytes == sum(
        c.bytes for c in components.values()
    )
    # A bigger octree needs more decode memory.
    assert (
        profiles.estimate(3, components, 512, False).peak_bytes
        > profiles.estimate(3, components, 256, False).peak_bytes
    )
