"""The checks every image must pass before it is segmented, wherever it comes from.

A file (`image.reading`), a DICOM series (`image.dicom_series`) and a volume uploaded to the
server (`remote.wire`) are judged here by the same rules, so one input gets one verdict.
NumPy only: the torch-free client and the server import it without SimpleITK work.
"""

from __future__ import annotations

import numpy as np

from sam2refine.errors import VolumeError
from sam2refine.image.volume import Volume


def check_geometry(volume: Volume, source: str) -> None:
    """Spacing positive and finite, origin finite, direction finite and not degenerate."""
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise VolumeError(
            f"{source} has an invalid voxel spacing {_fmt(spacing)} mm; every spacing must be a "
            "positive number. Fix the image header (e.g. re-export it from the scanner or Slicer)."
        )
    direction = np.asarray(volume.direction, dtype=np.float64)
    if not np.all(np.isfinite(volume.origin)):
        raise VolumeError(
            f"{source} has an invalid origin {_fmt(volume.origin)} in its header; re-export the "
            "image."
        )
    if (not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6
            or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3)):
        raise VolumeError(
            f"{source} has an invalid orientation (its direction matrix is degenerate, sheared "
            "or not a number), so its voxels have no true place in patient space; re-export "
            "the image."
        )


def check_voxels(volume: Volume, source: str, *, min_slices: int = 2) -> None:
    """Real, finite, not all equal, at least `min_slices` voxels along every axis."""
    voxels = np.asarray(volume.voxels)
    if voxels.ndim != 3:
        raise VolumeError(f"{source} is not a 3D volume (voxel array of shape {voxels.shape}).")
    if min(volume.shape_ijk) < min_slices:
        raise VolumeError(
            f"{source} has a single slice (size {volume.shape_ijk}); segmentation needs a 3D "
            "volume with several slices along every axis."
        )
    if not (np.issubdtype(voxels.dtype, np.integer) or np.issubdtype(voxels.dtype, np.floating)
            or voxels.dtype == np.bool_):
        kind = "complex" if np.issubdtype(voxels.dtype, np.complexfloating) else str(voxels.dtype)
        raise VolumeError(
            f"{source} has {kind} voxels; give a scalar image of integers or floats (convert "
            "complex data to magnitude first)."
        )
    if np.issubdtype(voxels.dtype, np.floating):
        bad = voxels.size - int(np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise VolumeError(
                f"{source} has {bad} voxel(s) that are NaN or infinite (of {voxels.size}). "
                "Fix or re-export the image so every voxel has a number."
            )
    if voxels.size and voxels.min() == voxels.max():
        raise VolumeError(
            f"Every voxel of {source} has the same value ({voxels.flat[0]}): there is nothing "
            "to segment. Check that this is the right image."
        )


def check_image(volume: Volume, source: str) -> None:
    """Everything an image to segment must satisfy (geometry, then voxels)."""
    check_geometry(volume, source)
    check_voxels(volume, source)


def _fmt(values: object) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in np.asarray(values).ravel()) + ")"
