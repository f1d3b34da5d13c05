"""The DICOM series a segmentation references: read (headers only), checked, and matched to a
labelmap through patient space.

The source series is read with pydicom, headers only: a SEG needs the source UIDs and
geometry, not its pixels, so compressed series (JPEG 2000 ...) cost nothing to reference.
UIDs a SEG must reference are never invented. SOP Class/Instance UIDs emptied in the data set
but kept in the file meta information are the same values by definition and are recovered;
a missing Study/Series Instance UID or Frame of Reference UID makes the export stop with a
message naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sam2refine.errors import ExportError, VolumeError
from sam2refine.image.dicom_series import DicomSeries, select_series
from sam2refine.image.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("sam2refine")

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                 "SOPInstanceUID", "SOPClassUID")
# Type 2 attributes highdicom copies from the source; absent ones are added empty (allowed).
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                 "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


@dataclass(eq=False)
class ReferenceSeries:
    """A DICOM image series (headers only) sorted along its slice direction, with its grid.

    ``datasets[k]`` is slice k of the grid described by ``spacing``/``origin``/``direction``
    (the `Volume` convention: direction columns are the LPS vectors of the i, j, k axes, i
    along image rows, j down the columns, k along ``datasets``).
    """

    folder: Path
    datasets: list[Dataset]  # headers only, pixel data not loaded
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    recovered: list[str] = field(default_factory=list)  # notes on UIDs taken from file meta

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i (columns), j (rows), k (slices)."""
        first = self.datasets[0]
        return int(first.Columns), int(first.Rows), len(self.datasets)

    @property
    def grid(self) -> Volume:
        """The series grid as a `Volume` whose voxels are a zero-memory placeholder."""
        i, j, k = self.shape_ijk
        placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), (k, j, i))
        return Volume(placeholder, self.spacing, self.origin, self.direction.copy())


# ----- reading the reference series ------------------------------------------------------------
def recover_instance_uids(dataset: Dataset) -> list[str]:
    """Fill an empty SOP Instance/Class UID from the file meta information; return what was.

    Part 10 defines MediaStorageSOPInstanceUID/MediaStorageSOPClassUID as the same values as
    the data set's SOPInstanceUID/SOPClassUID, so copying them back invents nothing.
    """
    from pydicom.uid import UID

    meta = getattr(dataset, "file_meta", None)
    recovered = []
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if _valid_uid(dataset.get(keyword)):
            continue
        value = meta.get(meta_keyword) if meta is not None else None
        if _valid_uid(value):
            setattr(dataset, keyword, UID(str(value)))
            recovered.append(keyword)
    return recovered


def _valid_uid(value: object) -> bool:
    from pydicom.uid import UID

    return bool(value) and UID(str(value)).is_valid


def _missing_uid_message(folder: Path, missing: dict[str, int], total: int,
                         recovered: list[str]) -> str:
    names = list(missing)
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def files(count: int) -> str:
        return f"all {total} files" if count == total else f"{count} of {total} files"

    if len(set(missing.values())) == 1:
        counts = f"empty in {files(next(iter(missing.values())))}"
    else:
        counts = "; ".join(f"{n} empty in {files(c)}" for n, c in missing.items())
    note = (f" ({' and '.join(recovered)} were recovered from the file meta information.)"
            if recovered else "")
    return (
        f"Cannot export DICOM-SEG: the reference series in {folder} lacks {listed} ({counts}). "
        "A DICOM-SEG must name the exact study, series and images it belongs to, and these "
        f"UIDs cannot be recovered from the files, so none is made up.{note} Retrieve the "
        "series again from the PACS, or have it re-exported with its UIDs kept (anonymisation "
        "must keep or consistently replace UIDs, not blank them); or export the segmentation "
        "as .seg.nrrd or NIfTI instead."
    )


def _check_references(folder: Path, datasets: list[Dataset]) -> list[str]:
    """Recover what truly can be, refuse what cannot; returns the recovery notes."""
    recovered: dict[str, int] = {}
    for ds in datasets:
        for name in recover_instance_uids(ds):
            recovered[name] = recovered.get(name, 0) + 1
    missing = {}
    for keyword in REQUIRED_UIDS:
        count = sum(not _valid_uid(ds.get(keyword)) for ds in datasets)
        if count:
            missing[keyword] = count
    if missing:
        raise ExportError(_missing_uid_message(folder, missing, len(datasets), list(recovered)))
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword)) for ds in datasets}
        if len(values) > 1:
            raise ExportError(
                f"The images in {folder} belong to {len(values)} different {keyword}s; a "
                "DICOM-SEG references one series. Give a folder holding only that series."
            )
    instances = [str(ds.SOPInstanceUID) for ds in datasets]
    if len(set(instances)) < len(instances):
        raise ExportError(
            f"Several files in {folder} carry the same SOPInstanceUID (duplicated copies or a "
            "broken anonymisation); remove the duplicates or re-export the series from the PACS."
        )
    return [f"{name} recovered from the file meta information in {count} file(s)"
            for name, count in recovered.items()]


def _grid(series: DicomSeries) -> tuple:
    """(spacing, origin, direction) of a checked, sorted series (`image.dicom_series`)."""
    first = series.datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    pixel = np.asarray(first.PixelSpacing, dtype=float)  # [between rows, between columns]
    positions = series.positions
    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
        spacing_k = float(np.linalg.norm(step))
        axis_k = step / spacing_k
    else:
        spacing_k = float(first.get("SliceThickness") or 1.0)
        axis_k = np.cross(row, col)
    spacing = (float(pixel[1]), float(pixel[0]), spacing_k)
    return spacing, tuple(float(v) for v in positions[0]), np.column_stack([row, col, axis_k])


def read_reference_series(folder: str | Path, series_uid: str | None = None) -> ReferenceSeries:
    """Read a DICOM series folder (headers only) as the reference of a DICOM-SEG.

    The series is chosen and checked as loading a volume does (`image.dicom_series`): a
    folder with several image series needs `series_uid`; raises `ExportError` naming the
    problem, or the missing UIDs when the series cannot be referenced (see the module
    docstring).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ExportError(
            f"Reference series folder not found: {folder}. Give the folder that contains the "
            "DICOM files of the series the segmentation was made on."
        )
    try:
        series = select_series(folder, series_uid)
    except VolumeError as exc:
        raise ExportError(f"Cannot use {folder} as the reference series: {exc}") from exc
    if series.multiframe:
        raise ExportError(
            f"{series.files[0]} is a multi-frame (enhanced) image; DICOM-SEG export supports "
            "series of single-frame images. Convert the series to classic images first."
        )
    datasets = series.datasets
    recovered = _check_references(folder, datasets)
    for note in recovered:
        log.info("Reference series: %s.", note)
    for ds in datasets:
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    spacing, origin, direction = _grid(series)
    return ReferenceSeries(folder, datasets, spacing, origin, direction, recovered)


# ----- matching the labelmap to the series grid ------------------------------------------------
def _fmt(values) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _axis_letters(direction: np.ndarray) -> str:
    """Patient directions of the i, j, k axes, e.g. "LPS"; "oblique" when not axis-aligned."""
    letters = ""
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        if abs(column[axis]) < 0.999:
            return "oblique"
        letters += ("LPS" if column[axis] > 0 else "RAI")[axis]
    return letters


def _mismatch(labelmap: Volume, ref: ReferenceSeries, details: list[str]) -> ExportError:
    return ExportError(
        f"The segmentation does not lie on the voxel grid of the reference series in "
        f"{ref.folder}: {'; '.join(details)}. Choose the series the segmentation was made on, "
        "or resample the segmentation onto this series (e.g. in Slicer) and export again."
    )


def map_to_reference(labelmap: Volume, ref: ReferenceSeries) -> np.ndarray:
    """The labelmap's voxels as the series' [slice, row, column] array.

    The labelmap must lie on the series grid in patient space (voxel centres on the series'
    voxel centres within 1% of a voxel); axis order and direction may differ, and it may
    cover part of the grid only (Slicer saves segmentations cropped to their extent), the
    rest being background. A labelled voxel outside the series, or any other grid, raises
    `ExportError` naming the mismatch.
    """
    grid = ref.grid
    cosines = labelmap.direction.T @ grid.direction  # [labelmap axis, reference axis]
    axes = [int(np.argmax(np.abs(cosines[:, a]))) for a in range(3)]
    if sorted(axes) != [0, 1, 2] or min(abs(cosines[b, a]) for a, b in enumerate(axes)) < 0.999:
        raise _mismatch(labelmap, ref, [
            f"its orientation differs (voxel axes {_axis_letters(labelmap.direction)} vs "
            f"{_axis_letters(grid.direction)} in the series)"])
    spacing = [labelmap.spacing[b] for b in axes]
    if not np.allclose(spacing, grid.spacing, rtol=1e-3, atol=1e-4):
        raise _mismatch(labelmap, ref, [f"voxel size {_fmt(spacing)} mm vs "
                                        f"{_fmt(grid.spacing)} mm"])
    signs = [1 if cosines[b, a] > 0 else -1 for a, b in enumerate(axes)]
    view = np.asarray(labelmap.voxels).transpose(2, 1, 0).transpose(axes)  # reference [i, j, k]
    view = view[tuple(slice(None, None, s) for s in signs)]
    # the first voxel of `view` (labelmap index of that corner) in reference voxel indices
    corner = [0 if signs[a] > 0 else labelmap.shape_ijk[b] - 1 for a, b in enumerate(axes)]
    first = np.zeros(3)
    first[axes] = corner
    start = grid.lps_to_index(labelmap.index_to_lps(first))
    offset = np.round(start).astype(int)
    shift_mm = np.abs(start - offset) * np.asarray(grid.spacing)
    if shift_mm.max() > max(1e-3, 0.01 * min(grid.spacing)):
        raise _mismatch(labelmap, ref, [
            f"its voxels are displaced by {shift_mm.max():.3g} mm from the series' voxel "
            f"centres (first voxel at LPS {_fmt(labelmap.index_to_lps(first))} mm)"])
    size = np.asarray(grid.shape_ijk)
    if np.array_equal(offset, 0) and view.shape == tuple(size):
        return view.transpose(2, 1, 0)  # the same grid: a view, no copy
    low = np.maximum(offset, 0)
    high = np.minimum(offset + np.asarray(view.shape), size)
    inside = tuple(slice(lo - o, hi - o) for lo, hi, o in zip(low, high, offset))
    kept = view[inside] if np.all(high > low) else view[:0, :0, :0]
    total = int(np.count_nonzero(view))
    if int(np.count_nonzero(kept)) != total:
        raise _mismatch(labelmap, ref, [
            f"{total - int(np.count_nonzero(kept))} labelled voxel(s) lie outside the series "
            f"(size {_fmt(view.shape)} voxels starting at series voxel {_fmt(offset)}; the "
            f"series has {_fmt(size)})"])
    out = np.zeros(tuple(size), dtype=view.dtype)
    if kept.size:
        out[tuple(slice(lo, hi) for lo, hi in zip(low, high))] = kept
    return out.transpose(2, 1, 0)
