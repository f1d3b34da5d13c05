"""Slice stacks along patient axes: orientation, oblique volumes, exact round trips."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sam2refine.errors import VolumeError
from sam2refine.image.slicing import AXES, slice_stack
from sam2refine.image.volume import Volume
from tests.conftest import rotation

# Direction in LPS that frame, row and column indices must increase along, per view.
EXPECTED = {
    "axial": ([0, 0, 1], [0, 1, 0], [1, 0, 0]),  # I->S, A->P, R->L
    "coronal": ([0, -1, 0], [0, 0, -1], [1, 0, 0]),  # P->A, S->I, R->L
    "sagittal": ([1, 0, 0], [0, 0, -1], [0, 1, 0]),  # R->L, S->I, A->P
}


def _signed_permutations() -> list[np.ndarray]:
    """All 48 axis-aligned direction matrices (permutations with sign flips)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            d = np.zeros((3, 3))
            for col, row in enumerate(perm):
                d[row, col] = signs[col]
            out.append(d)
    return out


DIRECTIONS = [
    *_signed_permutations(),
    rotation(2, 30.0) @ np.diag([-1.0, -1.0, 1.0]),
    rotation(0, 25.0) @ rotation(1, -20.0),
    rotation(1, 40.0) @ _signed_permutations()[13],
]


def _volume(direction: np.ndarray, shape_kji=(5, 6, 7), spacing=(0.7, 0.9, 2.5)) -> Volume:
    voxels = np.arange(np.prod(shape_kji), dtype=np.int32).reshape(shape_kji)
    return Volume(voxels, spacing, (10.0, -20.0, 30.0), direction)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: np.array2string(
    np.round(d, 2).ravel(), separator=","))
def test_frames_rows_and_columns_follow_the_patient_axes(axis, direction):
    volume = _volume(direction)
    stack = slice_stack(volume, axis)
    origin = volume.index_to_lps(stack.frc_to_ijk([0, 0, 0]))
    for n, expected in enumerate(EXPECTED[axis]):
        step = np.zeros(3)
        step[n] = 1
        moved = volume.index_to_lps(stack.frc_to_ijk(step)) - origin
        unit = moved / np.linalg.norm(moved)
        # The best-aligned voxel axis: within 45 degrees of the wanted patient direction.
        assert unit @ np.asarray(expected, float) > np.cos(np.radians(45)), (n, unit)
    assert sorted(stack.perm) == [0, 1, 2]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("direction", DIRECTIONS[::5])
def test_round_trips_are_exact(axis, direction):
    volume = _volume(direction)
    stack = slice_stack(volume, axis)
    frames = stack.frames(volume.voxels)
    assert frames.shape == (stack.num_frames, stack.height, stack.width)
    assert np.shares_memory(frames, volume.voxels)  # a view: no copy of the volume
    np.testing.assert_array_equal(stack.to_volume(frames), volume.voxels)
    ijk = np.argwhere(np.ones(volume.voxels.shape, bool))[:, ::-1]  # every (i, j, k)
    frc = stack.ijk_to_frc(ijk)
    np.testing.assert_array_equal(stack.frc_to_ijk(frc), ijk)
    # The frame pixel of a voxel holds that voxel's value.
    np.testing.assert_array_equal(frames[tuple(frc.T)], volume.voxels[tuple(ijk[:, ::-1].T)])
    continuous = np.random.default_rng(0).uniform(-0.5, 5.5, (20, 3))
    np.testing.assert_allclose(stack.frc_to_ijk(stack.ijk_to_frc(continuous)), continuous,
                               atol=1e-12)


def test_lps_flipped_volume_slices_axially_along_k():
    volume = _volume(np.diag([-1.0, -1.0, 1.0]))  # how NIfTI files stored in RAS order load
    stack = slice_stack(volume)
    assert stack.axis == "axial"
    assert stack.perm == (2, 1, 0)
    assert stack.flip == (False, True, True)
    assert (stack.num_frames, stack.height, stack.width) == (5, 6, 7)
    assert stack.spacing_frc == (2.5, 0.9, 0.7)
    np.testing.assert_array_equal(stack.ijk_to_frc([2, 1, 3]), [3, 6 - 1 - 1, 7 - 1 - 2])


def test_k_axis_along_posterior_is_the_coronal_frame_axis():
    # i -> +x (left), j -> +z (superior), k -> +y (posterior)
    direction = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    volume = _volume(direction)
    coronal = slice_stack(volume, "coronal")
    assert coronal.perm == (2, 1, 0)
    assert coronal.flip == (True, True, False)  # frames P->A, rows S->I against +k, +j
    assert coronal.num_frames == volume.shape_ijk[2]
    frames = coronal.frames(volume.voxels)
    np.testing.assert_array_equal(frames[0], volume.voxels[-1, ::-1, :])
    axial = slice_stack(volume, "axial")
    assert axial.perm[0] == 1 and not axial.flip[0]
    sagittal = slice_stack(volume, "Sagittal")
    assert sagittal.axis == "sagittal" and sagittal.perm[0] == 0


def test_oblique_volume_uses_the_dominant_axis():
    slight = _volume(rotation(0, 30.0))  # k tilted 30 degrees towards y: still axial
    assert slice_stack(slight).perm[0] == 2
    steep = _volume(rotation(0, 60.0))  # k now closer to y than to z
    stack = slice_stack(steep)
    assert stack.perm[0] == 1
    assert len(set(stack.perm)) == 3


def test_unknown_axis_lists_the_valid_names():
    with pytest.raises(VolumeError, match="axial, coronal, sagittal"):
        slice_stack(_volume(np.eye(3)), "transverse")


def test_wrong_array_shapes_are_rejected():
    stack = slice_stack(_volume(np.eye(3)))
    with pytest.raises(VolumeError, match="does not match"):
        stack.frames(np.zeros((5, 6, 8)))
    with pytest.raises(VolumeError, match="do not match"):
        stack.to_volume(np.zeros((1, 2, 3)))
