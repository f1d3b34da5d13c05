"""`Volume`: a 3D image with its patient-space geometry (read by `image.reading`).

Voxel arrays are indexed [k, j, i] (as `SimpleITK.GetArrayFromImage` returns them); spacing,
origin and direction follow ITK/DICOM conventions in LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike

from sam2refine.errors import VolumeError


@dataclass(eq=False)
class Volume:
    """A 3D scalar image on a voxel grid placed in patient (LPS) space."""

    voxels: np.ndarray  # 3D, indexed [k, j, i]
    spacing: tuple[float, float, float]  # mm along i, j, k
    origin: tuple[float, float, float]  # LPS mm of the centre of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3); columns are the LPS unit vectors of the i, j, k axes

    def __post_init__(self) -> None:
        self.voxels = np.asarray(self.voxels)
        if self.voxels.ndim != 3:
            raise VolumeError(f"A volume needs a 3D voxel array; got shape {self.voxels.shape}.")
        self.spacing = tuple(float(s) for s in np.asarray(self.spacing).reshape(3))
        self.origin = tuple(float(o) for o in np.asarray(self.origin).reshape(3))
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.voxels.shape
        return int(i), int(j), int(k)

    def _index_to_lps_matrix(self) -> np.ndarray:
        return self.direction * np.asarray(self.spacing)[None, :]

    def index_to_lps(self, ijk: ArrayLike) -> np.ndarray:
        """Continuous voxel indices (..., 3) as (i, j, k) -> LPS positions in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self._index_to_lps_matrix().T + np.asarray(self.origin)

    def lps_to_index(self, lps: ArrayLike) -> np.ndarray:
        """LPS positions in mm (..., 3) -> continuous voxel indices (i, j, k)."""
        lps = np.asarray(lps, dtype=np.float64)
        inverse = np.linalg.inv(self._index_to_lps_matrix())
        return (lps - np.asarray(self.origin)) @ inverse.T

    def index_to_ras(self, ijk: ArrayLike) -> np.ndarray:
        """Continuous voxel indices -> RAS positions in mm (Slicer's world coordinates)."""
        return _flip_xy(self.index_to_lps(ijk))

    def ras_to_index(self, ras: ArrayLike) -> np.ndarray:
        """RAS positions in mm -> continuous voxel indices."""
        return self.lps_to_index(_flip_xy(np.asarray(ras, dtype=np.float64)))

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with this volume's voxels and geometry (bool becomes uint8)."""
        voxels = self.voxels.astype(np.uint8) if self.voxels.dtype == bool else self.voxels
        image = sitk.GetImageFromArray(np.ascontiguousarray(voxels), isVector=False)
        set_geometry(image, self)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Wrap a 3D scalar SimpleITK image (voxels are copied)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise VolumeError(
                f"Expected a 3D single-channel image; got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel."
            )
        return cls(
            voxels=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        )

    def with_voxels(self, voxels: np.ndarray) -> Volume:
        """The same grid with another voxel array (e.g. a label map); shapes must match."""
        voxels = np.asarray(voxels)
        if voxels.shape != self.voxels.shape:
            raise VolumeError(
                f"Voxel array of shape {voxels.shape} does not fit this volume's grid "
                f"{self.voxels.shape} ([k, j, i])."
            )
        return Volume(voxels, self.spacing, self.origin, self.direction.copy())

    def same_geometry(self, other: Volume, tol: float = 1e-4) -> bool:
        """Whether both volumes share one voxel grid (size, spacing, origin, direction)."""
        return (
            self.voxels.shape == other.voxels.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )


def _flip_xy(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, -1.0, 1.0])


def set_geometry(image: sitk.Image, volume: Volume) -> None:
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
