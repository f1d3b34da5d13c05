"""Volume slices as SAM 2 video frames (no torch here: remote clients use it too).

Slices are cut along a *patient* axis (axial, coronal, sagittal) found from the direction
matrix, never along raw array order, and shown in radiological display orientation (patient
right on image left), the orientation medical SAM-style models are trained on:

- axial: frames inferior -> superior; rows anterior -> posterior; columns right -> left.
- coronal: frames posterior -> anterior; rows superior -> inferior; columns right -> left.
- sagittal: frames right -> left; rows superior -> inferior; columns anterior -> posterior.

Each role (frame, row, column) takes the voxel axis (i, j or k) closest to its patient axis,
so oblique volumes work too (the dominant axis is used; nothing is resampled).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from sam2refine.errors import VolumeError
from sam2refine.image.volume import Volume

AXES = ("axial", "coronal", "sagittal")

# For each view: (LPS axis, sign) that frame, row and column indices increase along.
# LPS axes: 0 = x (towards patient Left), 1 = y (Posterior), 2 = z (Superior).
_ROLES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "axial": ((2, +1), (1, +1), (0, +1)),
    "coronal": ((1, -1), (2, -1), (0, +1)),
    "sagittal": ((0, +1), (2, -1), (1, +1)),
}


@dataclass(frozen=True)
class SliceStack:
    """Maps volume voxels <-> frames (N, H, W) in radiological display orientation."""

    axis: str
    perm: tuple[int, int, int]  # voxel index axis (0=i, 1=j, 2=k) used as frame, row, col
    flip: tuple[bool, bool, bool]  # whether frame, row, col run against that voxel axis
    vol_shape_ijk: tuple[int, int, int]
    spacing_frc: tuple[float, float, float]  # mm per frame step, per row, per column

    @property
    def num_frames(self) -> int:
        return self.vol_shape_ijk[self.perm[0]]

    @property
    def height(self) -> int:
        return self.vol_shape_ijk[self.perm[1]]

    @property
    def width(self) -> int:
        return self.vol_shape_ijk[self.perm[2]]

    def _flips(self) -> tuple[slice, ...]:
        return tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)

    def frames(self, voxels_kji: np.ndarray) -> np.ndarray:
        """(N, H, W) frames of a [k, j, i] array: a view, so slicing it copies one frame only."""
        voxels_kji = np.asarray(voxels_kji)
        if voxels_kji.shape != self.vol_shape_ijk[::-1]:
            raise VolumeError(
                f"Array of shape {voxels_kji.shape} does not match the volume grid "
                f"{self.vol_shape_ijk[::-1]} ([k, j, i])."
            )
        return voxels_kji.transpose([2 - p for p in self.perm])[self._flips()]

    def to_volume(self, frames: np.ndarray) -> np.ndarray:
        """Inverse of `frames`: (N, H, W) -> a contiguous [k, j, i] array."""
        frames = np.asarray(frames)
        expected = (self.num_frames, self.height, self.width)
        if frames.shape != expected:
            raise VolumeError(
                f"Frames of shape {frames.shape} do not match the slice stack {expected}."
            )
        order = [self.perm.index(2 - a) for a in range(3)]
        return np.ascontiguousarray(frames[self._flips()].transpose(order))

    def ijk_to_frc(self, ijk: ArrayLike) -> np.ndarray:
        """Voxel indices (i, j, k), shape (..., 3), integer or continuous -> (frame, row, col)."""
        ijk = _triples(ijk)
        frc = ijk[..., list(self.perm)]
        for n, axis in enumerate(self.perm):
            if self.flip[n]:
                frc[..., n] = (self.vol_shape_ijk[axis] - 1) - frc[..., n]
        return frc

    def frc_to_ijk(self, frc: ArrayLike) -> np.ndarray:
        """(frame, row, col), shape (..., 3), integer or continuous -> voxel indices (i, j, k)."""
        frc = _triples(frc)
        ijk = np.empty_like(frc)
        for n, axis in enumerate(self.perm):
            value = frc[..., n]
            if self.flip[n]:
                value = (self.vol_shape_ijk[axis] - 1) - value
            ijk[..., axis] = value
        return ijk


def _triples(points: ArrayLike) -> np.ndarray:
    points = np.array(points)  # a copy: callers' arrays are never modified
    if points.shape[-1:] != (3,):
        raise ValueError(f"Expected coordinates of shape (..., 3); got {points.shape}.")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"Expected numeric coordinates; got {points.dtype}.")
    return points


def slice_stack(volume: Volume, axis: str = "axial") -> SliceStack:
    """The slice stack of `volume` along a patient axis ('axial', 'coronal' or 'sagittal')."""
    name = str(axis).strip().lower()
    if name not in _ROLES:
        raise VolumeError(f"Unknown slice axis '{axis}'; use one of: {', '.join(AXES)}.")
    roles = _ROLES[name]
    direction = np.asarray(volume.direction, dtype=np.float64)

    # The assignment of voxel axes to roles that best follows the patient axes (exhaustive
    # over the six permutations, so oblique volumes never map two roles to one voxel axis).
    def score(perm: tuple[int, ...]) -> float:
        return sum(abs(direction[lps, v]) for (lps, _), v in zip(roles, perm))

    perm = max(itertools.permutations(range(3)), key=score)
    flip = tuple(
        bool(direction[lps, v] * sign < 0) for (lps, sign), v in zip(roles, perm)
    )
    return SliceStack(
        axis=name,
        perm=(perm[0], perm[1], perm[2]),
        flip=(flip[0], flip[1], flip[2]),
        vol_shape_ijk=volume.shape_ijk,
        spacing_frc=tuple(float(volume.spacing[v]) for v in perm),
    )
