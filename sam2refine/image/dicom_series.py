"""DICOM series folders: which series a folder holds, each checked, one read as a volume.

Every file is read header-first with pydicom (pixel data deferred), so a folder is judged
before any pixel is decoded, by the same rules for `segment`, `auto` and a DICOM-SEG export
(`io.dicom_reference`): a series with a truncated file, a missing slice (uneven positions) or
slices of different sizes is refused naming the file or the gap; a folder with several image
series needs the user to pick one by SeriesInstanceUID (`--series`), never chosen silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from sam2refine.errors import VolumeError
from sam2refine.image.itk import first_line, quiet_itk

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SUPPORTED_FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd)"
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
             "Columns")
_PIXEL_DATA = 0x7FE00010


@dataclass(eq=False)
class DicomSeries:
    """One image series of a folder: headers (pixel data dropped) sorted along the slice
    normal, their files in the same order, and the slice positions along that normal (mm)."""

    folder: Path
    uid: str
    description: str
    datasets: list[Dataset]
    files: list[Path]
    positions: np.ndarray  # (n, 3) ImagePositionPatient per slice, sorted
    multiframe: bool = False

    def summary(self) -> str:
        """One line naming the series for a list in a message."""
        text = f" \u201c{self.description}\u201d" if self.description else ""
        frames = "1 multi-frame image" if self.multiframe else f"{len(self.files)} images"
        return f"{self.uid}{text} ({frames})"


def _read_header(path: Path) -> tuple[Dataset, bool] | None:
    """(header, has pixel data) of a DICOM file, its pixel data checked for length, then
    dropped; None for files that are not DICOM. A damaged DICOM file raises `VolumeError`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as handle:
            magic = handle.read(132)[128:]
            handle.seek(0)
            ds = pydicom.dcmread(handle, defer_size=1024, force=magic == b"DICM")
            size = handle.seek(0, 2)
    except InvalidDicomError:
        return None  # not DICOM (notes, thumbnails ...)
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError) as exc:
        if magic != b"DICM":
            return None
        raise VolumeError(f"The DICOM file {path} is damaged ({exc}); retrieve the series "
                          "again (e.g. re-export it from the PACS).") from exc
    if "SOPClassUID" not in ds and magic != b"DICM":
        return None
    pixels = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length = getattr(pixels, "length", None)
    tell = getattr(pixels, "value_tell", None)
    if length is not None and tell is not None and length != 0xFFFFFFFF and tell + length > size:
        raise VolumeError(
            f"The DICOM file {path} is truncated: it holds {max(size - tell, 0)} of its "
            f"{length} bytes of pixel data (cut off while copying or downloading). Retrieve "
            "the series again."
        )
    if pixels is not None:
        del ds[_PIXEL_DATA]
    return ds, pixels is not None


def scan_folder(folder: Path) -> list[DicomSeries]:
    """Every image series in `folder` (not its subfolders), each checked and sorted."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VolumeError(f"DICOM folder not found: {folder}. Check the path.")
    entries = sorted(folder.iterdir())
    if not entries:
        raise VolumeError(f"The folder {folder} is empty. Choose the folder that contains the "
                          "DICOM files of the series.")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    multiframe: list[tuple[Path, Dataset]] = []
    unplaced: dict[str, Path] = {}  # images without position, by series (screenshots ...)
    for path in (p for p in entries if p.is_file()):
        header = _read_header(path)
        if header is None or not header[1]:
            continue  # not an image: notes, structured reports, RTSTRUCT ...
        ds = header[0]
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            if str(ds.get("Modality", "")) != "SEG":
                multiframe.append((path, ds))
        elif all(k in ds for k in _GEOMETRY):
            groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((path, ds))
        else:
            unplaced.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), path)
    for uid, path in unplaced.items():
        if uid in groups:
            raise VolumeError(f"The DICOM image {path} of series {uid} has no position or "
                              "orientation (ImagePositionPatient / ImageOrientationPatient), so "
                              "it cannot be placed in the volume. Retrieve the series again.")
    series = [_sorted_series(folder, uid, members) for uid, members in groups.items()]
    series += [DicomSeries(folder, str(ds.get("SeriesInstanceUID", "")),
                           str(ds.get("SeriesDescription", "")), [ds], [path],
                           np.zeros((1, 3)), multiframe=True) for path, ds in multiframe]
    if not series:
        hint = (" It has subfolders: choose the folder that directly contains the DICOM files."
                if any(p.is_dir() for p in entries)
                else " Give a DICOM series folder or an image file: " + SUPPORTED_FORMATS + ".")
        raise VolumeError(f"No DICOM series found in the folder {folder}.{hint}")
    return series


def _sorted_series(folder: Path, uid: str, members: list[tuple[Path, Dataset]]) -> DicomSeries:
    """The series' slices sorted along their normal; uneven or mixed slices are refused."""
    first = members[0][1]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    for path, ds in members:
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)) or not (
            np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4)
            and np.allclose(np.asarray(ds.PixelSpacing, dtype=float),
                            np.asarray(first.PixelSpacing, dtype=float), rtol=1e-4)
        ):
            raise VolumeError(
                f"The images of series {uid} in {folder} differ in size, orientation or pixel "
                f"spacing ({path.name} vs {members[0][0].name}; e.g. a scout or a reformat "
                "mixed into the series); give a folder with one volume."
            )
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in members])
    order = np.argsort(positions @ normal, kind="stable")
    members = [members[n] for n in order]
    positions = positions[order]
    _check_even(folder, uid, [p for p, _ in members], positions, normal)
    return DicomSeries(folder, uid, str(first.get("SeriesDescription", "") or ""),
                       [ds for _, ds in members], [p for p, _ in members], positions)


def _check_even(folder: Path, uid: str, files: list[Path], positions: np.ndarray,
                normal: np.ndarray) -> None:
    """Slices evenly spaced along one line; a gap or a duplicate is named with its files."""
    if len(files) < 2:
        return
    depth = positions @ normal
    gaps = np.diff(depth)
    if gaps.min() < 1e-3:
        n = int(np.argmin(gaps))
        raise VolumeError(
            f"{files[n].name} and {files[n + 1].name} in {folder} lie at the same position "
            f"({depth[n]:.2f} mm): the series {uid} holds more than one volume (e.g. several "
            "phases or a duplicate copy). Separate them into their own folders."
        )
    step = float(np.median(gaps))
    tolerance = max(1e-3, 0.01 * step)
    offsets = positions - positions[0]
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if sideways.max() > 10 * tolerance:
        n = int(np.argmax(sideways))
        raise VolumeError(
            f"The slices of series {uid} in {folder} are not stacked straight: {files[n].name} "
            f"lies {sideways[n]:.3g} mm sideways of the first slice (a tilted gantry or a "
            "sheared acquisition). Read as a volume its voxels would be misplaced; resample it "
            "onto a regular grid first (e.g. Slicer's DICOM import corrects gantry tilt)."
        )
    uneven = np.abs(gaps - step) > tolerance
    if uneven.any():
        n = int(np.argmax(uneven))
        missing = round(gaps[n] / step) - 1
        guess = (f"about {missing} slice(s) are missing there" if missing >= 1 else
                 "the slices are not evenly spaced")
        raise VolumeError(
            f"The series {uid} in {folder} has a gap: {files[n].name} and {files[n + 1].name} "
            f"are {gaps[n]:.3g} mm apart where its other slices are {step:.3g} mm apart; "
            f"{guess}. Retrieve the complete series again (a volume read from it would be "
            "stretched)."
        )


def select_series(folder: Path, uid: str | None = None) -> DicomSeries:
    """The series `uid` of `folder`, or its only series; several and no `uid` is an error."""
    series = scan_folder(folder)
    listed = "; ".join(s.summary() for s in series)
    if uid is not None:
        for candidate in series:
            if candidate.uid == uid.strip():
                return candidate
        raise VolumeError(f"The folder {folder} has no image series {uid}; it holds: {listed}. "
                          "Give one of these with --series.")
    if len(series) > 1:
        raise VolumeError(
            f"The folder {folder} holds {len(series)} image series: {listed}. Choose one with "
            "--series UID (or put each series in its own folder)."
        )
    return series[0]


def read_dicom_folder(folder: Path, uid: str | None = None) -> tuple[sitk.Image, DicomSeries]:
    """The pixels of one checked series of `folder` (see `select_series`) as an ITK image,
    with the series it came from."""
    series = select_series(folder, uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        with quiet_itk():
            return reader.Execute(), series
    except RuntimeError as exc:
        raise VolumeError(
            f"Cannot read the DICOM series {series.uid} in {folder} ({len(series.files)} "
            f"files): {first_line(exc)}. Check that the files are complete and not corrupt."
        ) from exc
