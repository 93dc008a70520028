"""SAM 3D Objects input preparation and stage-1 post-processing (plain functions, no model).

Upstream equivalence (bit-identical on synthetic images, point maps, latents and voxel sets) was
checked against the reference implementation outside the repo; these tests pin the behaviour.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from services.recon.families.sam3d import pose, preprocess


def rgba_with_box(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return preprocess.merge_mask(image, mask)


def plane(height: int, width: int, depth: float = 5.0) -> torch.Tensor:
    """Point (x=column, y=row, z=depth) at each pixel."""
    rows, cols = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    return torch.stack([cols, rows, torch.full_like(rows, depth)], -1)


# -- mask -------------------------------------------------------------------------------------------


def test_merge_mask_replaces_alpha_and_resizes_nearest():
    image = np.zeros((4, 6, 4), np.uint8)
    image[..., 3] = 77
    mask = np.zeros((2, 3), bool)
    mask[0, 1] = True
    merged = preprocess.merge_mask(image, mask)
    assert merged.shape == (4, 6, 4) and merged.dtype == np.uint8
    expected = np.zeros((4, 6), np.uint8)
    expected[0:2, 2:4] = 255
    assert np.array_equal(merged[..., 3], expected)
    assert np.array_equal(
        preprocess.merge_mask(image[..., :3], np.full((4, 6), 0.7))[..., 3], np.full((4, 6), 255)
    )
    assert np.array_equal(
        preprocess.merge_mask(image[..., :3], np.full((4, 6), 3, np.uint8))[..., 3], np.full((4, 6), 255)
    )


def test_merge_mask_without_mask():
    rgb = np.zeros((3, 5, 3), np.uint8)
    assert (preprocess.merge_mask(rgb, None)[..., 3] == 255).all()  # RGB: the whole image is the object
    rgba = np.dstack([rgb, np.arange(15, dtype=np.uint8).reshape(3, 5)])
    assert np.array_equal(preprocess.merge_mask(rgba, None), rgba)  # RGBA keeps its own alpha
    with pytest.raises(ValueError, match="uint8"):
        preprocess.merge_mask(rgb.astype(np.float32), None)


@pytest.mark.parametrize(
    ("alpha_box", "value", "message"),
    [
        (None, 0, "mask is empty"),
        ((slice(10, 30), slice(5, 25)), 100, "mask is empty"),  # only alpha <= 127
        ((slice(10, 30), slice(5, 7)), 255, r"too small: it spans 2x20"),
        ((slice(10, 11), slice(5, 25)), 255, r"too small: it spans 20x1"),
    ],
)
def test_masks_upstream_crashes_on_are_rejected(alpha_box, value, message):
    rgba = np.zeros((40, 40, 4), np.uint8)
    if alpha_box is not None:
        rgba[alpha_box[0], alpha_box[1], 3] = value
    with pytest.raises(ValueError, match=message):
        preprocess.validate_mask(rgba)
    with pytest.raises(ValueError, match=message):
        preprocess.prepare_ss_inputs(rgba, plane(40, 40), size=16)
    with pytest.raises(ValueError, match=message):
        preprocess.prepare_slat_inputs(rgba, size=16)


def test_three_pixel_mask_is_accepted():
    preprocess.validate_mask(rgba_with_box(20, 20, (4, 7), (8, 11)))


# -- point map ---------------------------------------------------------------------------------------


def test_camera_flip_and_invalid_points():
    points = torch.tensor([[[1.0, 2.0, 3.0], [float("inf"), 0.0, 1.0]]])
    out = preprocess.to_camera_pointmap(points)
    assert out[0, 0].tolist() == [-1.0, -2.0, 3.0]
    assert torch.isnan(out[0, 1]).all()  # any non-finite coordinate invalidates the point


def test_resize_pointmap_nearest():
    points = plane(2, 3)
    out = preprocess.resize_pointmap(points, 4, 6)
    assert out.shape == (4, 6, 3)
    assert out[3, 5].tolist() == points[1, 2].tolist() and out[0, 1].tolist() == points[0, 0].tolist()


def test_ssi_scale_and_shift_on_a_plane():
    rgba = rgba_with_box(10, 10, (2, 6), (3, 8))  # rows 2..5, columns 3..7
    out = preprocess.prepare_ss_inputs(rgba, plane(10, 10), size=10)
    # shift: torch's lower median of the masked points per axis
    assert out["pointmap_shift"].tolist() == [[5.0, 3.0, 5.0]]
    rows, cols = np.mgrid[0:10, 0:10]
    largest = np.sort(np.maximum(np.abs(cols - 5), np.abs(rows - 3)).reshape(-1))
    expected_scale = float(largest[(largest.size - 1) // 2])
    assert out["pointmap_scale"].tolist() == [[expected_scale] * 3]
    assert torch.equal(out["rgb_pointmap_scale"], out["pointmap_scale"])
    assert torch.equal(out["rgb_pointmap_shift"], out["pointmap_shift"])
    full = out["rgb_pointmap"][0]  # 10x10 image at size 10: no pad, no resize
    assert full.shape == (3, 10, 10)
    assert torch.allclose(
        full[:, 7, 1], torch.tensor([(1 - 5) / expected_scale, (7 - 3) / expected_scale, 0.0])
    )


def test_faint_alpha_counts_for_the_crop_but_not_for_the_moments():
    rgba = rgba_with_box(10, 10, (2, 6), (3, 8))
    faint = rgba.copy()
    faint[7:10, 0:3, 3] = 100  # alpha <= 127: inside the bbox of non-zero alpha, outside the SSI region
    base = preprocess.prepare_ss_inputs(rgba, plane(10, 10), size=10)
    out = preprocess.prepare_ss_inputs(faint, plane(10, 10), size=10)
    assert torch.equal(out["pointmap_shift"], base["pointmap_shift"])
    assert torch.equal(out["pointmap_scale"], base["pointmap_scale"])
    boxes = [preprocess.crop_box(torch.from_numpy(image[..., 3])) for image in (faint, rgba)]
    assert boxes[0] != boxes[1]


def test_ss_inputs_shapes_dtypes_and_ranges():
    rgba = rgba_with_box(90, 120, (30, 60), (40, 100))
    rgba[35, 50, 3] = 128  # soft alpha reaches the embedders as is
    out = preprocess.prepare_ss_inputs(rgba, plane(45, 60), size=64)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "image": (1, 3, 64, 64), "mask": (1, 1, 64, 64), "rgb_image": (1, 3, 64, 64),
        "rgb_image_mask": (1, 1, 64, 64), "pointmap": (1, 3, 64, 64), "rgb_pointmap": (1, 3, 64, 64),
        "pointmap_scale": (1, 3), "pointmap_shift": (1, 3),
        "rgb_pointmap_scale": (1, 3), "rgb_pointmap_shift": (1, 3),
    }  # fmt: skip
    assert all(v.dtype == torch.float32 for v in out.values())
    for key in ("image", "rgb_image", "mask", "rgb_image_mask"):
        assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    assert set(preprocess.embedder_inputs(out)) == set(preprocess.EMBEDDER_KEYS)
    slat = preprocess.prepare_slat_inputs(rgba, size=64)
    assert set(slat) == {"image", "mask", "rgb_image", "rgb_image_mask"}
    for key in slat:
        assert torch.equal(slat[key], out[key])


def test_crop_box_is_square_around_the_mask():
    mask = torch.zeros(50, 60)
    mask[10:31, 20:41] = 1  # bbox 20..40 x 10..30: centre (30, 20), max-min 20 -> side int(20 * 1.2) = 24
    assert preprocess.crop_box(mask) == (18, 8, 42, 32)
    mask = torch.zeros(50, 60)
    mask[5:20, 0:10] = 1  # x centre 4.5, y centre 12: corners truncate toward zero, box leaves the image
    left, top, right, bottom = preprocess.crop_box(mask)
    assert (left, top, right, bottom) == (-3, 4, 12, 20)
    rgba = np.zeros((50, 60, 4), np.uint8)
    rgba[5:20, 0:10] = 255
    out = preprocess.prepare_ss_inputs(rgba, plane(50, 60), size=16)  # 15x16 crop -> padded to 16x16
    image, points = out["image"][0], out["pointmap"][0]
    assert image.shape == (3, 16, 16)
    assert torch.isnan(points[:, :, 15]).all() and not torch.isnan(points[:, :, :15]).any()  # NaN pad column
    assert (image[:, :, 15] == 0).all()
    assert (points[:, :, :3] == 0).all()  # outside the image: 0, as upstream's crop fills it
    assert (out["mask"][0, 0, 1:, 3:13] == 1).all() and (out["mask"][0, 0, :, :3] == 0).all()
    assert (out["mask"][0, 0, 0] == 0).all()  # crop row 0 is image row 4, above the mask


def test_full_pointmap_is_padded_with_zero_and_centred():
    rgba = rgba_with_box(6, 10, (1, 5), (2, 8))
    out = preprocess.prepare_ss_inputs(rgba, plane(6, 10), size=10)
    assert (out["rgb_image"][0, :, :2] == 0).all() and (out["rgb_image"][0, :, 8:] == 0).all()
    assert (out["rgb_pointmap"][0, :, :2] == 0).all() and (out["rgb_pointmap"][0, :, 8:] == 0).all()
    assert (out["rgb_image_mask"][0, 0, 3:7, 2:8] == 1).all() and out["rgb_image_mask"].sum() == 24


# -- pose --------------------------------------------------------------------------------------------


def axis_angle_quaternion(axis, angle):
    axis = torch.tensor(axis, dtype=torch.float32)
    axis = axis / axis.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)]), axis * math.sin(angle / 2)])


KNOWN = [
    ((1, 0, 0), 0.0),
    ((0, 0, 1), math.pi / 2),
    ((1, 0, 0), math.pi),  # w = 0: the x pivot
    ((0, 1, 0), math.pi),
    ((0, 0, 1), math.pi),
    ((1, 2, 3), 2.5),
    ((-1, 0.5, 0.2), -1.0),
    ((1, 0, 0), -3.0),  # x pivot with w of the other sign: the result is flipped to w >= 0
]


@pytest.mark.parametrize(("axis", "angle"), KNOWN)
def test_6d_to_quaternion_round_trip(axis, angle):
    q = axis_angle_quaternion(axis, angle)
    q = torch.where(q[:1] < 0, -q, q)
    matrix = pose.quaternion_to_matrix(q)
    assert torch.allclose(matrix @ matrix.T, torch.eye(3), atol=1e-6)
    d6 = torch.cat([matrix[:, 0] * 3.0, matrix[:, 1] + 0.5 * matrix[:, 0]])  # unnormalised, skewed
    assert torch.allclose(pose.rotation_6d_to_matrix(d6), matrix, atol=1e-6)
    back = pose.matrix_to_quaternion(pose.rotation_6d_to_matrix(d6))
    assert back[0] >= 0
    assert torch.allclose(back, q, atol=1e-6) or (q[0].abs() < 1e-6 and torch.allclose(back, -q, atol=1e-6))


def test_quarter_turn_about_z_matrix():
    matrix = pose.quaternion_to_matrix(axis_angle_quaternion((0, 0, 1), math.pi / 2))
    assert torch.allclose(matrix, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)


def test_decode_pose_maps_through_the_scene_moments():
    mean, std = torch.tensor(pose.ROTATION_6D_MEAN), torch.tensor(pose.ROTATION_6D_STD)
    identity_6d = torch.tensor([1.0, 0, 0, 0, 1, 0])
    latents = {
        "6drotation_normalized": ((identity_6d - mean) / std).reshape(1, 1, 6),
        "scale": torch.log(torch.tensor([2.0, 2.0, 2.0])).reshape(1, 1, 3),
        "translation": torch.tensor([0.5, -1.0, 2.0]).reshape(1, 1, 3),
        "translation_scale": torch.zeros(1, 1, 1),
    }
    out = pose.decode_pose(latents, torch.tensor([[3.0, 3.0, 3.0]]), torch.tensor([[1.0, 2.0, 10.0]]), 2)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "rotation": (1, 4),
        "translation": (1, 3),
        "scale": (1, 3),
    }
    assert torch.allclose(out["rotation"], torch.tensor([[1.0, 0, 0, 0]]), atol=1e-5)
    assert torch.allclose(out["translation"], torch.tensor([[2.5, -1.0, 16.0]]))
    assert torch.allclose(out["scale"], torch.tensor([[12.0, 12.0, 12.0]]), atol=1e-5)  # 2 * 3 * factor 2
    anisotropic = dict(latents, scale=torch.log(torch.tensor([1.0, 2.0, 6.0])).reshape(1, 1, 3))
    out = pose.decode_pose(anisotropic, None, None)
    assert torch.allclose(out["scale"], torch.full((1, 3), 3.0), atol=1e-5)  # the mean of the axes
    assert torch.allclose(out["translation"], torch.tensor([[0.5, -1.0, 2.0]]))


# -- sparse structure --------------------------------------------------------------------------------


def cube(lo: int, hi: int) -> torch.Tensor:
    grid = torch.zeros(64, 64, 64, dtype=torch.bool)
    grid[lo:hi, lo:hi, lo:hi] = True
    return torch.argwhere(grid[None])[:, [0, 1, 2, 3]].int()


def test_prune_solid_cube_leaves_its_shell():
    coords = cube(10, 15)  # 5^3 voxels
    kept = pose.prune_surface(coords)
    assert kept.shape == (5**3 - 3**3, 4) and kept.dtype == torch.int32
    inner = ((kept[:, 1:] >= 11) & (kept[:, 1:] <= 13)).all(dim=1)
    assert not inner.any()
    assert pose.prune_surface(pose.prune_surface(coords)).shape == kept.shape  # a shell has no interior
    with pytest.raises(ValueError, match="no occupied voxel"):
        pose.prune_surface(coords[:0])


def test_downsample_factor():
    small = cube(0, 30)  # 27000 voxels: under the limit
    same, factor = pose.downsample_if_large(small)
    assert factor == 1 and same is small
    full = cube(0, 64)  # 262144 voxels
    halved, factor = pose.downsample_if_large(full)
    assert factor == 2 and halved.shape == (32**3, 4) and halved.dtype == torch.int32
    assert halved[:, 1:].min() == 16 and halved[:, 1:].max() == 47  # half size, centred
    capped, factor = pose.downsample_if_large(full, limit=1000, generator=torch.Generator().manual_seed(0))
    assert factor == 2 and capped.shape == (1000, 4)
