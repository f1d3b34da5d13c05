"""Reading images (NIfTI, NRRD, MetaImage files, DICOM series folders) as checked `Volume`s.

Everything is read through SimpleITK so every format keeps its real orientation; what cannot
be segmented (2D, 4D, multi-channel, truncated, NaN, constant, broken geometry) is refused
with a `VolumeError` naming the file and the fix. Label maps are read by `image.labels` through
the same `read_image`, so a damaged file gets the same verdict whichever command reads it.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sam2refine.errors import VolumeError
from sam2refine.image.checks import check_geometry, check_image
from sam2refine.image.dicom_series import SUPPORTED_FORMATS, read_dicom_folder
from sam2refine.image.itk import first_line, quiet_itk
from sam2refine.image.volume import Volume

_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> NumPy float type


def read_image(path: str | Path, *, series: str | None = None) -> tuple[sitk.Image, Path]:
    """Read a file or DICOM folder (`series`: which series of the folder, by UID).

    Checks that it exists, can be decoded and is complete; NIfTI files are also scanned for
    NaN / infinite voxels, which ITK would silently read as 0.
    """
    image, path, _ = _read(path, series)
    return image, path


def _read(path: str | Path, series: str | None) -> tuple[sitk.Image, Path, str | None]:
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"File or folder not found: {path}. Check the path.")
    if path.is_dir():
        image, found = read_dicom_folder(path, series)
        return image, path, found.uid
    if series is not None:
        raise VolumeError(f"--series picks a series in a DICOM folder; {path} is a file. Leave "
                          "--series out, or give the DICOM folder.")
    _scan_nifti(path)  # first: a cut-off file is named as such, not as "unreadable"
    try:
        with quiet_itk():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(
            f"Cannot read {path}: it is not a readable image, or it is damaged or incomplete "
            f"({first_line(exc)}). Give an image in {SUPPORTED_FORMATS} or a DICOM series "
            "folder, or copy the file again."
        ) from exc
    return image, path, None


def _nifti_layout(header: bytes) -> tuple[int, int, str] | None:
    """(bytes needed, data offset, float dtype or '') of a single-file NIfTI-1/2; None if not."""
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if size == 348 and len(header) >= 348 and header[344:347] == b"n+1":
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif size == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
        else:
            continue
        count = np.prod([max(int(d), 1) for d in dims[1 : 1 + min(max(int(dims[0]), 0), 7)]])
        offset = max(offset, size)
        floats = endian + _NIFTI_FLOATS[datatype] if datatype in _NIFTI_FLOATS else ""
        return offset + int(count) * max(int(bitpix), 8) // 8, offset, floats
    return None


def _scan_nifti(path: Path) -> None:
    """Refuse a cut-off NIfTI (ITK zero-fills the missing voxels) and NaN / infinite voxels
    (ITK reads them as 0), reading the file once as a stream."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    inflater = zlib.decompressobj(31) if name.endswith(".gz") else None
    header, available, layout = b"", 0, None
    pending, not_finite = b"", 0
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below; errors become one line
    except OSError as exc:
        raise VolumeError(f"Cannot open {path}: {exc.strerror or exc}. Check the file's "
                          "permissions.") from exc
    with raw:
        while layout is None or available < layout[0]:
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
            start = available
            available += len(chunk)
            if len(header) < 540:
                header += chunk[: 540 - len(header)]
                layout = _nifti_layout(header)
            if layout is not None and layout[2]:
                needed, offset, dtype = layout
                data = pending + chunk[max(offset - start, 0): max(needed - start, 0)]
                usable = len(data) - len(data) % np.dtype(dtype).itemsize
                values = np.frombuffer(data[:usable], dtype)
                not_finite += values.size - int(np.count_nonzero(np.isfinite(values)))
                pending = data[usable:]
    if layout is not None and available < layout[0]:
        raise VolumeError(
            f"{path} is incomplete: it holds only {100 * available / layout[0]:.0f}% of its "
            "image data (the file was probably cut off while copying or downloading). Copy or "
            "export it again."
        )
    if not_finite:
        raise VolumeError(
            f"{path} has {not_finite} voxel(s) that are NaN or infinite. Fix or re-export the "
            "image so every voxel has a number."
        )


def as_3d_scalar(image: sitk.Image, path: Path, what: str, allow_thin: bool) -> sitk.Image:
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


def load_image(path: str | Path, *, series: str | None = None) -> tuple[Volume, str | None]:
    """`load_volume`, and the SeriesInstanceUID it was read from when `path` is a DICOM folder
    (recorded in the segmentation, so an export references the same series)."""
    image, path, uid = _read(path, series)
    image = as_3d_scalar(image, path, "the image", allow_thin=False)
    volume = Volume.from_sitk(image)
    check_image(volume, str(path))
    return volume, uid


def load_volume(path: str | Path, *, series: str | None = None) -> Volume:
    """Read an image (NIfTI, NRRD, MetaImage file or DICOM series folder) with its geometry.

    The volume is checked to be usable for segmentation (`image.checks.check_image`): a 3D
    scalar image with valid geometry and finite, non-constant voxels. A DICOM folder holding
    several series needs `series` (a SeriesInstanceUID). Problems raise `VolumeError` naming
    the file and the fix.
    """
    return load_image(path, series=series)[0]


__all__ = ["as_3d_scalar", "check_geometry", "load_image", "load_volume", "read_image"]
