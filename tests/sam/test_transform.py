"""The frame <-> SAM 2 model pixel transform: aspect kept, padding never leaks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
from sam2refine.image.slicing import SliceStack, slice_stack
from sam2refine.sam.transform import (
    SAM2_MEAN,
    SAM2_STD,
    ModelTransform,
    model_transform,
    to_model_tensor,
)


def _stack(height: int, width: int, row_mm: float = 1.0, col_mm: float = 1.0) -> SliceStack:
    return SliceStack("axial", (2, 1, 0), (False, False, False), (width, height, 3),
                      (2.0, row_mm, col_mm))


def test_transform_keeps_the_physical_aspect_ratio():
    t = model_transform(_stack(40, 48, row_mm=1.2, col_mm=0.8), 256)
    # 48 mm of rows, 38.4 mm of columns: rows fill the canvas, columns get 80 % of it.
    assert (t.scaled_height, t.scaled_width) == (256, 205)
    assert t.scale_row == 256 / 40 and t.scale_col == 205 / 48
    mm_per_model_px_rows = 1.2 / t.scale_row
    mm_per_model_px_cols = 0.8 / t.scale_col
    assert mm_per_model_px_rows == pytest.approx(mm_per_model_px_cols, rel=0.01)
    square = model_transform(_stack(512, 512, 0.7, 0.7), 1024)
    assert (square.scaled_height, square.scaled_width, square.scale_row) == (1024, 1024, 2.0)
    wide = model_transform(_stack(30, 200), 512)  # a thin strip keeps at least one row
    assert (wide.scaled_height, wide.scaled_width) == (77, 512)
    sliver = model_transform(_stack(1, 5000), 256)
    assert sliver.scaled_height == 1


TRANSFORMS = {
    "upsample-aniso": _stack(40, 48, 1.2, 0.8),
    "upsample-x4": _stack(64, 64),
    "downsample": _stack(300, 200, 0.5, 0.9),
    "tall": _stack(50, 20, 1.0, 1.0),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_points_land_on_the_model_pixel_showing_the_same_spot(name):
    t = model_transform(TRANSFORMS[name], 256)
    rng = np.random.default_rng(1)
    for r, c in rng.integers(0, [t.height, t.width], (10, 2)):
        image = torch.zeros(1, t.height, t.width)
        image[0, r, c] = 1.0
        model = t.image_to_model(image)[0]
        x, y = t.points_to_model([[r, c]])[0]
        # The model pixel the point falls in is (one of) the brightest.
        row, col = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        assert model[row, col] >= model.max() - 1e-6, (r, c, x, y)


def test_point_and_box_conventions_match_sam():
    t = model_transform(_stack(64, 64), 256)  # 4 model pixels per frame pixel
    np.testing.assert_allclose(t.points_to_model([[0, 0], [10, 3]]), [[1.5, 1.5], [13.5, 41.5]])
    np.testing.assert_allclose(t.box_to_model(2, 5, 10, 20), [20, 8, 83, 43])
    identity = model_transform(_stack(256, 256), 256)
    np.testing.assert_allclose(identity.points_to_model([[7, 9]]), [[9, 7]])
    np.testing.assert_allclose(identity.box_to_model(1, 2, 3, 4), [2, 1, 4, 3])
    shrink = model_transform(_stack(1024, 1024), 256)
    x0, y0, x1, y1 = shrink.box_to_model(8, 8, 8, 8)  # one pixel: corners must not cross
    assert x1 >= x0 and y1 >= y0


def _mask_to_box(mask: torch.Tensor) -> list[int]:
    """Inclusive (x0, y0, x1, y1) of a 2D mask, as SAM 2's training boxes are made."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


@pytest.mark.parametrize("name", ["upsample-x4", "upsample-aniso"])
def test_box_matches_the_box_of_the_mapped_mask(name):
    t = model_transform(TRANSFORMS[name], 256)
    mask = torch.zeros(1, 1, t.height, t.width)
    mask[0, 0, 5:17, 9:30] = 1
    model_mask = t.mask_to_model(mask)[0, 0] > 0.5
    expected = _mask_to_box(model_mask)
    np.testing.assert_allclose(t.box_to_model(5, 9, 16, 29), expected, atol=1.0)


def _boundary(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Pixels within `radius` (chessboard distance) of the mask's edge."""
    padded = np.pad(mask, radius, mode="edge")
    near = np.zeros_like(mask)
    h, w = mask.shape
    for dr, dc in itertools.product(range(-radius, radius + 1), repeat=2):
        near |= padded[radius + dr : radius + dr + h, radius + dc : radius + dc + w] != mask
    return near


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("low_res", [False, True])
def test_masks_round_trip_through_model_pixels(name, low_res):
    t = model_transform(TRANSFORMS[name], 256)
    mask = np.zeros((2, t.height, t.width), bool)
    mask[0, 3 : t.height // 2, 4 : t.width - 3] = True
    mask[1, t.height // 3 :, : t.width // 2] = True
    model = t.mask_to_model(torch.from_numpy(mask[:, None].astype(np.float32)))
    assert model.shape == (2, 1, 256, 256)
    logits = model * 20.0 - 10.0
    radius = 1
    if low_res:  # SAM 2's decoder outputs are at a quarter of the model resolution
        logits = F.interpolate(logits, (64, 64), mode="bilinear", align_corners=False,
                               antialias=True)
        # One low-resolution pixel spans this many frame pixels: the edge may move that much.
        radius = int(np.ceil(4 / min(t.scale_row, t.scale_col, 4)))
    back = t.logits_to_frame(logits)[:, 0].numpy() > 0
    assert back.shape == mask.shape
    wrong = back != mask
    for f in range(2):
        assert not (wrong[f] & ~_boundary(mask[f], radius)).any()
        assert wrong[f].sum() <= 0.5 * _boundary(mask[f], radius).sum()


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("size", [256, 64, 37])
def test_padding_never_leaks_into_the_frame(name, size):
    t = model_transform(TRANSFORMS[name], 256)
    content = t.image_to_model(torch.ones(1, 1, t.height, t.width))
    content = F.interpolate(content, (size, size), mode="nearest")
    logits = torch.where(content > 0.5, 5.0, -100.0)
    if size == 256:
        back = t.logits_to_frame(logits)
        torch.testing.assert_close(back, torch.full_like(back, 5.0))
    else:  # at low resolution the content edge is fractional: only the last row/col may blend
        back = t.logits_to_frame(logits)[0, 0, :-1, :-1]
        torch.testing.assert_close(back, torch.full_like(back, 5.0))


def test_image_to_model_shapes_and_zero_padding():
    t = model_transform(_stack(40, 48, 1.2, 0.8), 256)
    single = t.image_to_model(torch.ones(3, 40, 48))
    assert single.shape == (3, 256, 256)
    assert (single[:, :, t.scaled_width :] == 0).all()
    assert torch.allclose(single[:, :, : t.scaled_width], torch.ones(1))
    batch = t.image_to_model(torch.ones(2, 3, 40, 48))
    assert batch.shape == (2, 3, 256, 256)
    with pytest.raises(ValueError, match="size"):
        t.image_to_model(torch.ones(3, 48, 40))


def test_transform_of_a_real_volume(totalseg_dir):
    from sam2refine.image.reading import load_volume

    volume = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    stack = slice_stack(volume, "axial")
    assert (stack.num_frames, stack.height, stack.width) == (30, 101, 122)
    t = model_transform(stack, 1024)
    assert isinstance(t, ModelTransform)
    assert (t.scaled_height, t.scaled_width) == (round(101 / 122 * 1024), 1024)
    coronal = slice_stack(volume, "coronal")
    assert (coronal.num_frames, coronal.height, coronal.width) == (101, 30, 122)


def test_model_tensor_layout_normalisation_and_padding():
    t = model_transform(_stack(40, 48, 1.2, 0.8), 256)
    unit = np.random.default_rng(0).uniform(0, 1, (3, 40, 48)).astype(np.float32)
    out = to_model_tensor(unit, t)
    assert out.shape == (3, 3, 256, 256) and out.dtype == torch.float32
    mean = torch.tensor(SAM2_MEAN)[None, :, None, None]
    std = torch.tensor(SAM2_STD)[None, :, None, None]
    grey = out * std + mean
    torch.testing.assert_close(grey[:, 0], grey[:, 1])  # three identical grey channels
    torch.testing.assert_close(grey[:, 0], grey[:, 2])
    expected = t.image_to_model(torch.from_numpy(unit)[:, None])[:, 0]
    torch.testing.assert_close(grey[:, 0], expected, atol=1e-5, rtol=0)
    # Padding (right of the 205 content columns) is intensity 0, i.e. black after normalising.
    pad = out[:, :, :, t.scaled_width :]
    torch.testing.assert_close(pad, ((0 - mean) / std).expand_as(pad))


def test_model_tensor_one_slice_at_a_time_equals_the_batch(phantom):
    stack = slice_stack(phantom)
    t = model_transform(stack, 128)
    frames = stack.frames(phantom.voxels)  # a flipped, non-contiguous view
    unit = frames_to_unit(frames, *normalize(phantom.voxels, parse_preset("ct")))
    batch = to_model_tensor(unit, t)
    for f in (0, 5, stack.num_frames - 1):
        single = to_model_tensor(frames_to_unit(frames[f : f + 1], -160.0, 240.0), t)
        torch.testing.assert_close(single[0], batch[f])
    with pytest.raises(ValueError, match="N, H, W"):
        to_model_tensor(unit[0], t)


def test_real_ct_gets_a_sensible_model_tensor(totalseg_dir):
    from sam2refine.image.reading import load_volume

    volume = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    low, high = normalize(volume.voxels, parse_preset("ct"))
    stack = slice_stack(volume)
    frame = stack.frames(volume.voxels)[15:16]
    unit = frames_to_unit(frame, low, high)
    assert 0.05 < unit.mean() < 0.6  # soft tissue visible, neither black nor white
    out = to_model_tensor(unit, model_transform(stack, 256))
    assert out.shape == (1, 3, 256, 256)
    assert torch.isfinite(out).all()
