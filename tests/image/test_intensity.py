"""Intensity presets and the SAM 2 input tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2refine.errors import VolumeError
from sam2refine.image import intensity
from sam2refine.image.intensity import (
    CT_WINDOWS,
    SAM2_MEAN,
    SAM2_STD,
    IntensityPreset,
    frames_to_unit,
    normalize,
    parse_preset,
    to_model_tensor,
)
from sam2refine.image.slicing import SliceStack, slice_stack
from sam2refine.sam.transform import model_transform


def test_presets_parse():
    assert parse_preset("ct") == IntensityPreset("ct", "abdomen")
    assert parse_preset(" CT-Lung ") == IntensityPreset("ct", "lung")
    assert parse_preset("mr") == IntensityPreset("mr", None, 0.5, 99.5)
    for window in CT_WINDOWS:
        assert parse_preset(f"ct-{window}").window == window
    with pytest.raises(VolumeError, match="Unknown intensity preset 'pet'.*ct-lung.*mr"):
        parse_preset("pet")
    with pytest.raises(VolumeError, match="Unknown intensity preset"):
        parse_preset("ct-kidney")


def test_ct_windows_are_the_standard_ones():
    assert CT_WINDOWS["abdomen"] == (40, 400)
    assert CT_WINDOWS["lung"] == (-600, 1500)
    assert CT_WINDOWS["bone"] == (400, 1800)
    assert CT_WINDOWS["brain"] == (40, 80)
    assert CT_WINDOWS["mediastinum"] == (50, 350)


def test_ct_uses_the_window_whatever_the_voxels():
    voxels = np.linspace(-1024, 2000, 1000).reshape(10, 10, 10)
    assert normalize(voxels, parse_preset("ct")) == (-160.0, 240.0)
    assert normalize(voxels, parse_preset("ct-lung")) == (-1350.0, 150.0)


def test_ct_window_that_shows_nothing_is_an_error():
    mr_like = np.random.default_rng(0).uniform(300, 4000, (4, 8, 8))
    with pytest.raises(VolumeError, match="Hounsfield.*'mr' preset"):
        normalize(mr_like, parse_preset("ct-brain"))


def test_mr_uses_volume_percentiles():
    voxels = np.arange(1000.0).reshape(10, 10, 10)
    low, high = normalize(voxels, parse_preset("mr"))
    assert (low, high) == pytest.approx(tuple(np.percentile(voxels, [0.5, 99.5])))
    custom = IntensityPreset("mr", None, 10.0, 90.0)
    assert normalize(voxels, custom) == pytest.approx((99.9, 899.1))


def test_mr_percentiles_are_sampled_on_large_volumes(monkeypatch):
    monkeypatch.setattr(intensity, "_PERCENTILE_SAMPLE", 20_000)
    rng = np.random.default_rng(0)
    voxels = rng.gamma(2.0, 100.0, (40, 50, 60)).astype(np.float32)
    exact = np.percentile(voxels, [0.5, 99.5])
    np.testing.assert_allclose(normalize(voxels, parse_preset("mr")), exact, rtol=0.15)
    strided = voxels.transpose(2, 0, 1)[::-1]  # not contiguous: sampled without a full copy
    np.testing.assert_allclose(normalize(strided, parse_preset("mr")), exact, rtol=0.15)


def test_degenerate_mr_range_is_an_error():
    voxels = np.zeros((10, 10, 10))
    voxels[0, 0, :3] = 5.0  # 0.3 % of voxels differ: both percentiles are 0
    with pytest.raises(VolumeError, match="degenerate.*same value"):
        normalize(voxels, parse_preset("mr"))
    with pytest.raises(VolumeError, match="percentiles"):
        normalize(voxels, IntensityPreset("mr", None, 60.0, 40.0))


def test_frames_to_unit_clips_and_keeps_the_input():
    frames = np.array([[[-200, -160, 40, 240, 1000]]], dtype=np.int16)
    unit = frames_to_unit(frames, -160.0, 240.0)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [[[0.0, 0.0, 0.5, 1.0, 1.0]]])
    floats = frames.astype(np.float32)
    frames_to_unit(floats, -160.0, 240.0)
    np.testing.assert_array_equal(floats, frames)  # input untouched
    with pytest.raises(VolumeError, match="empty"):
        frames_to_unit(frames, 5.0, 5.0)


def _stack(height: int, width: int, row_mm: float, col_mm: float) -> SliceStack:
    return SliceStack("axial", (2, 1, 0), (False, False, False), (width, height, 4),
                      (2.0, row_mm, col_mm))


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
    from sam2refine.image.volume import load_volume

    volume = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    low, high = normalize(volume.voxels, parse_preset("ct"))
    stack = slice_stack(volume)
    frame = stack.frames(volume.voxels)[15:16]
    unit = frames_to_unit(frame, low, high)
    assert 0.05 < unit.mean() < 0.6  # soft tissue visible, neither black nor white
    out = to_model_tensor(unit, model_transform(stack, 256))
    assert out.shape == (1, 3, 256, 256)
    assert torch.isfinite(out).all()
