"""Image volumes with their patient-space geometry: reading, checking, label resampling.

Voxel arrays are indexed [k, j, i] (as `SimpleITK.GetArrayFromImage` returns them); spacing,
origin and direction follow ITK/DICOM conventions in LPS millimetres. Everything is read
through SimpleITK so NIfTI, NRRD, MetaImage and DICOM series keep their real orientation.
"""

from __future__ import annotations

import contextlib
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike

from sam2refine.errors import VolumeError

SUPPORTED_FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd)"
_INTEGER_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64)


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
        _set_geometry(image, self)
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


def _set_geometry(image: sitk.Image, volume: Volume) -> None:
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))


# ----- reading ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Keep ITK's console warnings (e.g. 'No Series were found') out of the user's terminal."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _read_dicom_folder(folder: Path) -> sitk.Image:
    if not any(folder.iterdir()):
        raise VolumeError(
            f"The folder {folder} is empty. Choose the folder that contains the DICOM files "
            "of the series."
        )
    with _quiet_itk():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series]
    files = [f for f in files if f]
    if not files:
        hint = (
            " It has subfolders: choose the folder that directly contains the DICOM files."
            if any(p.is_dir() for p in folder.iterdir())
            else " Give a DICOM series folder or an image file: " + SUPPORTED_FORMATS + "."
        )
        raise VolumeError(f"No DICOM series found in the folder {folder}.{hint}")
    chosen = max(files, key=len)  # the series with the most files
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen)
    try:
        with _quiet_itk():
            return reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(
            f"Cannot read the DICOM series in {folder} ({len(chosen)} files): "
            f"{_first_line(exc)}. Check that the files are complete and not corrupt."
        ) from exc


def _first_line(exc: Exception) -> str:
    """The informative line of a SimpleITK/ITK exception text, without source locations."""
    lines = [re.sub(r"^(ITK ERROR|sitk::ERROR):\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", ln.strip())
             for ln in str(exc).splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith(("Exception thrown", "Reason:"))]
    return (useful or ["unknown error"])[-1]


def _read_image(path: str | Path) -> tuple[sitk.Image, Path]:
    """Read a file or DICOM folder; only checks that it exists and can be decoded."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"File or folder not found: {path}. Check the path.")
    if path.is_dir():
        return _read_dicom_folder(path), path
    try:
        with _quiet_itk():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(
            f"Cannot read {path}: it is not a readable image, or it is damaged or incomplete "
            f"({_first_line(exc)}). Supported: {SUPPORTED_FORMATS}, or a DICOM series folder."
        ) from exc
    _check_nifti_complete(path)
    return image, path


def _nifti_payload_size(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/2 needs (header, extensions, voxels); None if not NIfTI."""
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if size == 348 and len(header) >= 348 and header[344:347] == b"n+1":
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif size == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
        else:
            continue
        count = np.prod([max(int(d), 1) for d in dims[1 : 1 + min(max(int(dims[0]), 0), 7)]])
        return max(offset, size) + int(count) * max(int(bitpix), 8) // 8
    return None


def _check_nifti_complete(path: Path) -> None:
    """ITK silently zero-fills the missing voxels of a cut-off NIfTI file; refuse such files."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    inflater = zlib.decompressobj(31) if name.endswith(".gz") else None
    header, available, needed = b"", 0, None
    with open(path, "rb") as raw:
        while needed is None or available < needed:
            chunk = raw.read(1 << 20)
            if not chunk:
                break
            if inflater is not None:
                try:
                    chunk = inflater.decompress(chunk)
                    while inflater.eof and inflater.unused_data:  # concatenated gzip members
                        rest, inflater = inflater.unused_data, zlib.decompressobj(31)
                        chunk += inflater.decompress(rest)
                except zlib.error:
                    break  # corrupt data: `available` counts what could be read
            available += len(chunk)
            if len(header) < 540:
                header += chunk[: 540 - len(header)]
                needed = _nifti_payload_size(header)
    if needed is not None and available < needed:
        raise VolumeError(
            f"{path} is incomplete: it holds only {100 * available / needed:.0f}% of its image "
            "data (the file was probably cut off while copying or downloading). Copy or export "
            "it again."
        )


def _as_3d_scalar(image: sitk.Image, path: Path, what: str, allow_thin: bool) -> sitk.Image:
    """Reject 2D, 4D and multi-channel images; a 4D image with one time point becomes 3D."""
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise VolumeError(
            f"{path} is a multi-component (vector/colour) image with "
            f"{image.GetNumberOfComponentsPerPixel()} values per voxel; {what} must be a single "
            "3D scalar volume. Extract one channel (e.g. in Slicer or with SimpleITK) first."
        )
    if image.GetDimension() == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        size = image.GetSize()
    if image.GetDimension() > 3:
        raise VolumeError(
            f"{path} is a {image.GetDimension()}D image (size {size}); {what} must be a single "
            "3D scalar volume. Extract one time point / channel first (e.g. in Slicer or with "
            "SimpleITK)."
        )
    if path.is_dir():
        dicom_hint = " The DICOM series in this folder has a single slice."
    elif any(re.fullmatch(r"[0-9a-f]{4}\|[0-9a-f]{4}", key) for key in image.GetMetaDataKeys()):
        dicom_hint = " For DICOM, give the folder that contains the whole series, not one file."
    else:
        dicom_hint = ""
    if image.GetDimension() < 3 or (not allow_thin and min(size) < 2):
        single = " with a single slice" if image.GetDimension() == 3 else ""
        raise VolumeError(
            f"{path} is a 2D image{single} (size {size}); {what} must be a 3D volume with "
            f"several slices.{dicom_hint}"
        )
    return image


def _check_geometry(volume: Volume, path: Path) -> None:
    spacing = np.asarray(volume.spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise VolumeError(
            f"{path} has an invalid voxel spacing {volume.spacing}; fix the file header "
            "(spacing must be positive)."
        )
    if not np.all(np.isfinite(volume.origin)) or abs(np.linalg.det(volume.direction)) < 1e-6:
        raise VolumeError(
            f"{path} has an invalid origin or orientation in its header; re-export the image."
        )


def load_volume(path: str | Path) -> Volume:
    """Read an image (NIfTI, NRRD, MetaImage file or DICOM series folder) with its geometry.

    The volume is checked to be usable for segmentation: a 3D scalar image with finite,
    non-constant voxels. Problems raise `VolumeError` naming the file and the fix.
    """
    image, path = _read_image(path)
    image = _as_3d_scalar(image, path, "the image", allow_thin=False)
    volume = Volume.from_sitk(image)
    _check_geometry(volume, path)
    voxels = volume.voxels
    if np.issubdtype(voxels.dtype, np.complexfloating):
        raise VolumeError(f"{path} has complex-valued voxels; convert it to magnitude first.")
    if np.issubdtype(voxels.dtype, np.floating):
        bad = voxels.size - int(np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise VolumeError(
                f"{path} has {bad} voxel(s) that are NaN or infinite (of {voxels.size}). "
                "Fix or re-export the image so every voxel has a number."
            )
    if voxels.min() == voxels.max():
        raise VolumeError(
            f"Every voxel of {path} has the same value ({voxels.flat[0]}): there is nothing to "
            "segment. Check that this is the right image."
        )
    return volume


# ----- labels ----------------------------------------------------------------------------------
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
    _set_geometry(image, label)
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


def load_label_volume(path: str | Path, reference: Volume) -> Volume:
    """Read a label map (any grid) and resample it onto `reference`'s voxel grid.

    The file must hold a 3D scalar image with integer values; it is matched to the reference
    in patient space, so label maps stored with another orientation line up correctly.
    """
    image, path = _read_image(path)
    image = _as_3d_scalar(image, path, "a label map", allow_thin=True)
    label = Volume.from_sitk(image)
    _check_geometry(label, path)
    return resample_to(label, reference, source=f"The label file {path}")
