"""Synthetic CT phantoms: CT-like, varied, not separable by thresholds, valid nnU-Net datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam2refine.cli.main import main
from sam2refine.datasets.nnunet import read_dataset
from sam2refine.datasets.phantoms import PHANTOM_ORGANS, make_phantom_case, write_phantom_dataset
from sam2refine.errors import DatasetError

SMALL = (24, 40, 48)


@pytest.fixture(scope="module")
def phantom_cases():
    return [make_phantom_case(seed) for seed in range(2)]


def _best_window_dice(image: np.ndarray, mask: np.ndarray) -> float:
    """Dice of the best intensity window [low, high] (5 HU steps) for one organ.

    A window is at least as good as a single threshold, so this bounds what thresholding does.
    """
    edges = np.arange(-1100, 3100, 5)
    inside, _ = np.histogram(image[mask], edges)
    everywhere, _ = np.histogram(image, edges)
    cum_in = np.concatenate([[0], np.cumsum(inside)])
    cum_all = np.concatenate([[0], np.cumsum(everywhere)])
    low, high = np.triu_indices(len(edges))
    dice = 2 * (cum_in[high] - cum_in[low]) / (mask.sum() + cum_all[high] - cum_all[low])
    return float(dice.max())


def test_phantom_is_ct_like_with_realistic_geometry(phantom_cases):
    image, labels = phantom_cases[0]
    assert image.voxels.shape == (48, 80, 96)  # non-square slices
    assert image.voxels.dtype == np.int16 and labels.voxels.dtype == np.uint8
    assert labels.same_geometry(image)
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]))
    assert image.spacing == (1.5, 1.5, 4.0)
    voxels = image.voxels
    assert np.median(voxels[:, :4, :4]) < -900  # air in the corners, around the body
    assert (voxels > 300).sum() > 100  # bone present ...
    assert labels.voxels[voxels > 300].max() == 0  # ... and never labelled
    for name, low, high in (("liver", 35, 75), ("spleen", 25, 70)):
        mean = voxels[labels.voxels == PHANTOM_ORGANS[name]].mean()
        assert low < mean < high, (name, mean)


def test_organs_are_present_and_cover_only_some_slices(phantom_cases):
    for _, labels in phantom_cases:
        num_slices = labels.voxels.shape[0]
        for name, value in PHANTOM_ORGANS.items():
            slices = np.flatnonzero((labels.voxels == value).any(axis=(1, 2)))
            assert slices.size >= 4, name
            assert slices[0] > 0 and slices[-1] < num_slices - 1, name


def test_anatomy_sides_follow_the_lps_direction(phantom_cases):
    image, labels = phantom_cases[0]
    centres = {}
    for name, value in PHANTOM_ORGANS.items():
        k, j, i = np.nonzero(labels.voxels == value)
        centres[name] = image.index_to_lps([i.mean(), j.mean(), k.mean()])
    assert centres["liver"][0] < 0 < centres["spleen"][0]  # LPS x: right is negative
    assert centres["kidney_right"][0] < 0 < centres["kidney_left"][0]
    assert centres["kidney_left"][1] > centres["liver"][1]  # kidneys are posterior


def test_overlapping_organs_cannot_be_segmented_by_a_threshold(phantom_cases):
    for image, labels in phantom_cases:
        voxels = image.voxels
        for name in ("liver", "spleen", "kidney_left", "kidney_right"):
            dice = _best_window_dice(voxels, labels.voxels == PHANTOM_ORGANS[name])
            assert dice < 0.75, (name, dice)  # "clearly below 0.8"


def test_same_seed_same_phantom_other_seed_other_anatomy(phantom_cases):
    image, labels = make_phantom_case(0)
    np.testing.assert_array_equal(image.voxels, phantom_cases[0][0].voxels)
    np.testing.assert_array_equal(labels.voxels, phantom_cases[0][1].voxels)
    assert image.origin == phantom_cases[0][0].origin
    other = phantom_cases[1][1].voxels
    for value in PHANTOM_ORGANS.values():
        assert (other == value).sum() != (labels.voxels == value).sum()


def test_custom_shape_and_spacing():
    image, labels = make_phantom_case(5, shape_kji=SMALL, spacing=(2.0, 2.5, 5.0))
    assert image.voxels.shape == SMALL and image.spacing == (2.0, 2.5, 5.0)
    assert set(np.unique(labels.voxels)) == {0, *PHANTOM_ORGANS.values()}


def test_written_dataset_reads_back_as_nnunet(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", 3, seed=1, shape_kji=SMALL)
    ds = read_dataset(root)
    assert ds.labels == PHANTOM_ORGANS
    assert [c.case_id for c in ds.cases] == ["phantom_000", "phantom_001", "phantom_002"]
    image, labels = ds.load_case("phantom_001")
    assert image.voxels.shape == SMALL and labels.same_geometry(image, tol=1e-3)
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert json.loads((root / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    assert not list(root.rglob(".*tmp*"))  # atomic writes leave no temporary files


def test_dataset_is_deterministic_and_refuses_foreign_files(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", 1, seed=4, shape_kji=SMALL)
    b = write_phantom_dataset(tmp_path / "b", 1, seed=4, shape_kji=SMALL)
    ia, _ = read_dataset(a).load_case("phantom_000")
    ib, _ = read_dataset(b).load_case("phantom_000")
    np.testing.assert_array_equal(ia.voxels, ib.voxels)
    write_phantom_dataset(a, 1, seed=4, shape_kji=SMALL)  # rewriting the same cases is fine
    (b / "labelsTr" / "other_case.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="already holds other files.*other_case"):
        write_phantom_dataset(b, 1, seed=4, shape_kji=SMALL)
    with pytest.raises(DatasetError, match="at least one case"):
        write_phantom_dataset(tmp_path / "c", 0)


def test_make_phantoms_command(tmp_path):
    out = tmp_path / "cli"
    assert main(["make-phantoms", str(out), "--cases", "2", "--seed", "3",
                 "--shape", *map(str, SMALL)]) == 0
    assert len(read_dataset(out).cases) == 2
    assert main(["make-phantoms", str(out), "--cases", "1", "--shape", *map(str, SMALL)]) == 2
