"""Reading images (NIfTI, NRRD, MetaImage files, DICOM series folders) as checked `Volume`s.

Everything is read through SimpleITK so every format keeps its real orientation; what cannot
be segmented (2D, 4D, multi-channel, truncated, NaN, constant, broken geometry) is refused
with a `VolumeError` naming the file and the fix.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sam2refine.errors import VolumeError
from sam2refine.image.dicom_series import SUPPORTED_FORMATS, read_dicom_folder
from sam2refine.image.itk import first_line, quiet_itk
from sam2refine.image.volume import Volume


def read_image(path: str | Path) -> tuple[sitk.Image, Path]:
    """Read a file or DICOM folder; only checks that it exists and can be decoded."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"File or folder not found: {path}. Check the path.")
    if path.is_dir():
        return read_dicom_folder(path), path
    try:
        with quiet_itk():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(
            f"Cannot read {path}: it is not a readable image, or it is damaged or incomplete "
            f"({first_line(exc)}). Supported: {SUPPORTED_FORMATS}, or a DICOM series folder."
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


def check_geometry(volume: Volume, path: Path) -> None:
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
    image, path = read_image(path)
    image = as_3d_scalar(image, path, "the image", allow_thin=False)
    volume = Volume.from_sitk(image)
    check_geometry(volume, path)
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
