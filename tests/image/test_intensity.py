"""Intensity presets and the SAM 2 input tensor."""

from __future__ import annotations

import numpy as np
import pytest

from sam2refine.errors import VolumeError
from sam2refine.image import intensity
from sam2refine.image.intensity import (
    CT_WINDOWS,
    IntensityPreset,
    frames_to_unit,
    normalize,
    parse_preset,
)


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
