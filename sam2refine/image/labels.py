"""Label maps: integer checks and nearest-neighbour resampling onto an image's grid in patient
space, so label files stored on another grid or orientation line up with the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sam2refine.errors import VolumeError
from sam2refine.image.checks import check_geometry
from sam2refine.image.reading import as_3d_scalar, read_image
from sam2refine.image.volume import Volume, set_geometry

_INTEGER_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64)


def _integer_labels(voxels: np.ndarray, source: str) -> np.ndarray:
    """The label array as the smallest integer type holding it; non-integer values are errors."""
    if voxels.dtype == bool:
        return voxels.astype(np.uint8)
    if np.issubdtype(voxels.dtype, np.integer):
        return voxels
    if not np.issubdtype(voxels.dtype, np.floating):
        raise VolumeError(f"{source} has {voxels.dtype} voxels; a label map needs integers.")
    finite = np.isfinite(voxels)
    if not finite.all() or np.any(voxels != np.round(voxels)):
        raise VolumeError(
            f"{source} has non-integer voxel values, so it is not a label map (it may be an "
            "image). Give a segmentation / label map with integer labels (0 = background)."
        )
    low, high = (voxels.min(), voxels.max()) if voxels.size else (0, 0)
    for dtype in _INTEGER_TYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return voxels.astype(dtype)
    raise VolumeError(f"{source} has label values outside the 64-bit integer range.")


def _outside_marker(voxels: np.ndarray) -> tuple[np.ndarray, int]:
    """A value absent from `voxels` (widening the type if needed) marking 'outside the grid'.

    The marker is the type's minimum (signed) or maximum (unsigned), exact as a double.
    """
    low, high = (int(voxels.min()), int(voxels.max())) if voxels.size else (0, 0)
    for dtype in (voxels.dtype, np.int64):
        info = np.iinfo(dtype)
        if info.min < 0 and low > info.min:
            return voxels.astype(dtype, copy=False), int(info.min)
        if info.min == 0 and high < info.max < 2**53:
            return voxels.astype(dtype, copy=False), int(info.max)
    raise VolumeError("The label map uses every possible integer value; it cannot be resampled.")


def resample_to(label: Volume, reference: Volume, *, source: str = "The label map") -> Volume:
    """Nearest-neighbour resampling of a label map onto `reference`'s grid in patient space.

    Label values are kept exactly; reference voxels outside the label's extent become 0.
    Raises `VolumeError` if the two do not overlap at all (almost always the wrong file).
    """
    voxels = _integer_labels(label.voxels, source)
    if label.same_geometry(reference, tol=1e-6):
        return reference.with_voxels(voxels.copy())
    marked, outside = _outside_marker(voxels)
    image = sitk.GetImageFromArray(np.ascontiguousarray(marked))
    set_geometry(image, label)
    resampled = sitk.Resample(
        image, reference.shape_ijk, sitk.Transform(), sitk.sitkNearestNeighbor,
        reference.origin, reference.spacing, tuple(float(v) for v in reference.direction.ravel()),
        float(outside), image.GetPixelID(),
    )
    out = sitk.GetArrayFromImage(resampled)
    missing = out == outside
    if missing.all():
        raise VolumeError(
            f"{source} does not overlap the image in patient space: its extent "
            f"{_extent_text(label)} lies outside the image's {_extent_text(reference)}. It was "
            "probably made for a different scan; choose the label file that belongs to this image."
        )
    out[missing] = 0
    return reference.with_voxels(out.astype(voxels.dtype, copy=False))


def _extent_text(volume: Volume) -> str:
    """Bounding box of a volume's voxel extent in LPS mm, for messages."""
    corners = np.array(
        [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64
    ) * (np.asarray(volume.shape_ijk) - 1)
    lps = volume.index_to_lps(corners)
    low, high = lps.min(axis=0), lps.max(axis=0)
    return "LPS " + " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(low, high)) + " mm"


def read_label_map(path: str | Path) -> Volume:
    """A label map file (NIfTI, NRRD, MetaImage) as an integer `Volume` on its own grid.

    The one reader of label map files: the same completeness, NaN, dimension, geometry and
    integer checks for every command, so a damaged label file gets one verdict everywhere.
    (.seg.nrrd files, with segment names and layers, are read by `io.segmentation`.)
    """
    image, path = read_image(path)
    image = as_3d_scalar(image, path, "a label map", allow_thin=True)
    label = Volume.from_sitk(image)
    check_geometry(label, f"The label file {path}")
    return label.with_voxels(_integer_labels(label.voxels, f"The label file {path}"))


def load_label_volume(path: str | Path, reference: Volume) -> Volume:
    """Read a label map (any grid) and resample it onto `reference`'s voxel grid.

    The file must hold a 3D scalar image with integer values; it is matched to the reference
    in patient space, so label maps stored with another orientation line up correctly.
    """
    path = Path(path).expanduser()
    return resample_to(read_label_map(path), reference, source=f"The label file {path}")
