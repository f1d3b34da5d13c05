"""Write segmentations as files 3D Slicer opens directly: .seg.nrrd, or NIfTI labelmaps.

Every writer keeps the geometry of the source volume (size, origin, spacing, direction; never
cropped) and writes atomically, so an interrupted export never leaves a half-written file in
place of a good one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam2refine.errors import ExportError, VolumeError
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write, split_suffix
from sam2refine.io.colors import default_color

SEG_NRRD_SUFFIX = ".seg.nrrd"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUPPORTED_SUFFIXES = (SEG_NRRD_SUFFIX, *NIFTI_SUFFIXES)
_GZIP_LEVEL = 6  # level 9 is ~2x slower on CT-sized labelmaps for ~20% smaller files
_LABELMAP_REPRESENTATION = "Binary labelmap"
FIELD_PREFIX = "SAM2Refine_"  # custom .seg.nrrd header fields written by this package


@dataclass
class SegmentInfo:
    """One segment: its display name, its value in the labelmap, RGB colour in 0..1.

    ``terminology`` is an optional Slicer terminology entry string (seven ``~``-separated
    fields, e.g. ``"Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^
    Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"``).
    """

    name: str
    label: int
    color: tuple[float, float, float]
    terminology: str | None = None


def _smallest_unsigned_dtype(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ExportError(f"Label value {max_value} is too large; label values must fit in 32 bits.")


def _validate_segments(segments: Sequence[SegmentInfo]) -> None:
    names: set[str] = set()
    labels: set[int] = set()
    for seg in segments:
        if not isinstance(seg.name, str) or not seg.name.strip():
            raise ExportError(f"Segment with label {seg.label} has an empty name; name it.")
        if any(ch in seg.name for ch in "\r\n\0"):
            raise ExportError(f"Segment name {seg.name!r} contains a line break; remove it.")
        if (
            not isinstance(seg.label, int | np.integer)
            or isinstance(seg.label, bool)
            or seg.label < 1
        ):
            raise ExportError(
                f"Segment {seg.name!r} has label {seg.label!r}; labels must be integers >= 1 "
                "(0 is background)."
            )
        if len(seg.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in seg.color):
            raise ExportError(
                f"Segment {seg.name!r} has colour {seg.color!r}; give three RGB values in 0..1."
            )
        if seg.terminology is not None and (
            seg.terminology.count("~") != 6 or any(ch in seg.terminology for ch in "|\r\n")
        ):
            raise ExportError(
                f"Segment {seg.name!r} has an invalid terminology string {seg.terminology!r}; "
                "it needs seven '~'-separated fields and no '|' or line breaks."
            )
        if seg.name in names:
            raise ExportError(f"Two segments are named {seg.name!r}; segment names must be unique.")
        if int(seg.label) in labels:
            raise ExportError(f"Two segments use label {seg.label}; label values must be unique.")
        names.add(seg.name)
        labels.add(int(seg.label))


def prepare_labelmap(labelmap: Volume, segments: Sequence[SegmentInfo] | None) -> np.ndarray:
    """Validate the labelmap against the segments; return voxels in the smallest unsigned type."""
    voxels = np.asarray(labelmap.voxels)
    if voxels.ndim != 3:
        raise ExportError(f"The labelmap must be 3D, got an array of shape {voxels.shape}.")
    if not (np.issubdtype(voxels.dtype, np.integer) or voxels.dtype == np.bool_):
        raise ExportError(
            f"The labelmap has voxel type {voxels.dtype}; it must hold integer label values."
        )
    present = np.unique(voxels)
    if present.size and present[0] < 0:
        raise ExportError(f"The labelmap contains negative value {int(present[0])}.")
    present_labels = {int(v) for v in present if v != 0}
    max_value = max(present_labels, default=0)
    if segments is not None:
        _validate_segments(segments)
        declared = {int(s.label) for s in segments}
        undeclared = sorted(present_labels - declared)
        if undeclared:
            shown = ", ".join(str(v) for v in undeclared[:20])
            more = f" and {len(undeclared) - 20} more" if len(undeclared) > 20 else ""
            raise ExportError(
                f"The labelmap contains label values with no segment: {shown}{more}; "
                "declare a segment for each value or set those voxels to 0."
            )
        max_value = max(max_value, *declared, 0)
    return voxels.astype(_smallest_unsigned_dtype(max_value), copy=False)


def _ijk_to_lps(volume: Volume) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to LPS millimetres."""
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(np.asarray(volume.spacing, dtype=float))
    matrix[:3, 3] = np.asarray(volume.origin, dtype=float)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ExportError("The labelmap geometry is invalid (singular or non-finite direction).")
    return matrix


def _segment_header_fields(seg: SegmentInfo, shape_ijk: tuple[int, int, int]) -> dict:
    """slicerio segment dict producing the Segment{N}_* fields Slicer writes, in its order."""
    tags = {"TerminologyEntry": seg.terminology} if seg.terminology else {}
    return {
        "id": f"Segment_{int(seg.label)}",
        "name": seg.name,
        "nameAutoGenerated": False,
        "color": [round(float(c), 6) for c in seg.color],
        "colorAutoGenerated": False,
        "labelValue": int(seg.label),
        "layer": 0,
        # Full extent for every segment (as Slicer writes a shared layer): older Slicer versions
        # cropped a whole layer to its first segment's extent.
        "extent": [0, shape_ijk[0] - 1, 0, shape_ijk[1] - 1, 0, shape_ijk[2] - 1],
        "tags": tags,
    }


def write_seg_nrrd(
    path: Path,
    labelmap: Volume,
    segments: list[SegmentInfo],
    *,
    fields: Mapping[str, str] | None = None,
) -> Path:
    """Write a single-layer Slicer segmentation (.seg.nrrd) on the labelmap's own grid.

    ``fields`` become custom header fields (``SAM2Refine_*`` keys, e.g. the DICOM series the
    segmentation was made on) that `read_seg_nrrd_fields` returns; Slicer ignores them.
    """
    import slicerio

    path = Path(path)
    voxels = prepare_labelmap(labelmap, segments)
    extra = _check_fields(fields)
    for seg in segments:
        if not (seg.name.isascii() and (seg.terminology or "").isascii()):
            raise ExportError(
                f"Segment name {seg.name!r} or its terminology has non-ASCII characters, which a "
                ".seg.nrrd header cannot hold; rename the segment using ASCII characters only."
            )
    voxels_ijk = voxels.transpose(2, 1, 0)  # [k,j,i] -> [i,j,k], NRRD's (Fortran) axis order
    segmentation = {
        "voxels": voxels_ijk,
        "ijkToLPS": _ijk_to_lps(labelmap),
        "encoding": "gzip",
        "containedRepresentationNames": [_LABELMAP_REPRESENTATION],
        "masterRepresentation": _LABELMAP_REPRESENTATION,
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [_segment_header_fields(s, voxels_ijk.shape) for s in segments],
        **extra,
    }

    def _write(tmp: Path) -> None:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=_GZIP_LEVEL)

    return atomic_write(path, _write)


def _check_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    extra = {str(k): str(v) for k, v in (fields or {}).items()}
    for key, value in extra.items():
        if not key.startswith(FIELD_PREFIX) or not key.replace("_", "").isalnum():
            raise ExportError(f"Header field {key!r} must be {FIELD_PREFIX}<letters/digits>.")
        if not value.isascii() or any(ch in value for ch in "\r\n\0"):
            raise ExportError(
                f"Header field {key} = {value!r} must be one line of ASCII text (a .seg.nrrd "
                "header cannot hold other characters); move the file to a plain ASCII path."
            )
    return extra


def read_seg_nrrd_fields(path: Path) -> dict[str, str]:
    """The ``SAM2Refine_*`` custom header fields of a .seg.nrrd (empty if it has none)."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception as exc:  # pynrrd raises assorted types for malformed headers
        raise VolumeError(f"Cannot read the header of {path}: {exc}") from exc
    return {k: str(v) for k, v in header.items() if k.startswith(FIELD_PREFIX)}


def _labels_sidecar_path(path: Path) -> Path:
    base, _ = split_suffix(path)
    return path.with_name(f"{base}.labels.json")


def write_nifti_labelmap(
    path: Path, labelmap: Volume, segments: list[SegmentInfo] | None = None
) -> Path:
    """Write a NIfTI labelmap; with ``segments`` also ``<name>.labels.json`` (label -> name/colour).

    NIfTI has no place for segment names, so the sidecar keeps them for tools that look for it.
    """
    import SimpleITK as sitk

    path = Path(path)
    voxels = prepare_labelmap(labelmap, segments)
    _ijk_to_lps(labelmap)  # validates the geometry before anything is written
    image = labelmap.with_voxels(voxels).to_sitk()

    def _write(tmp: Path) -> None:
        sitk.WriteImage(image, str(tmp), useCompression=tmp.name.lower().endswith(".gz"))

    atomic_write(path, _write)
    if segments is not None:
        table = {
            str(int(s.label)): {
                "name": s.name,
                "color": [round(float(c), 6) for c in s.color],
                **({"terminology": s.terminology} if s.terminology else {}),
            }
            for s in sorted(segments, key=lambda s: int(s.label))
        }
        text = json.dumps({"labels": table}, indent=2, ensure_ascii=False) + "\n"
        atomic_write(_labels_sidecar_path(path), lambda tmp: tmp.write_text(text, "utf-8"))
    return path


def _terminology_string(segment: dict) -> str | None:
    import slicerio.segmentation as sio_seg

    entry = segment.get("terminology")
    return sio_seg.terminology_entry_to_string(entry) if entry else None


def read_seg_nrrd(path: Path) -> tuple[Volume, list[SegmentInfo]]:
    """Read a single-layer .seg.nrrd into a labelmap Volume ([k, j, i], LPS) and its segments."""
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"Segmentation file not found: {path}")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio/pynrrd raise assorted types for malformed files
        raise VolumeError(f"Cannot read segmentation {path}: {exc}") from exc
    voxels = segmentation["voxels"]
    if voxels.ndim == 4:
        raise VolumeError(
            f"{path} stores overlapping segments in {voxels.shape[0]} layers; only single-layer "
            "segmentations can be read. In Slicer, remove the overlaps or export a labelmap."
        )
    if voxels.ndim != 3:
        raise VolumeError(f"{path} is not a 3D segmentation (shape {voxels.shape}).")
    matrix = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise VolumeError(f"{path} has a degenerate voxel spacing {tuple(spacing)}.")
    volume = Volume(
        voxels=np.ascontiguousarray(voxels.transpose(2, 1, 0)),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in matrix[:3, 3]),
        direction=matrix[:3, :3] / spacing,
    )
    segments = []
    for index, seg in enumerate(segmentation.get("segments", [])):
        name = seg.get("name") or seg.get("id") or f"Segment_{index + 1}"
        color = seg.get("color") or default_color(index, name)
        segments.append(
            SegmentInfo(
                name=name,
                label=int(seg.get("labelValue", 1)),
                color=(float(color[0]), float(color[1]), float(color[2])),
                terminology=_terminology_string(seg),
            )
        )
    return volume, segments


def write_segmentation(
    path: Path,
    labelmap: Volume,
    segments: list[SegmentInfo],
    *,
    fields: Mapping[str, str] | None = None,
) -> Path:
    """Write ``labelmap`` in the format its suffix names: .seg.nrrd, .nii or .nii.gz.

    ``fields`` (``SAM2Refine_*`` header fields) are kept by .seg.nrrd only.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(SEG_NRRD_SUFFIX):
        return write_seg_nrrd(path, labelmap, segments, fields=fields)
    if name.endswith(NIFTI_SUFFIXES):
        return write_nifti_labelmap(path, labelmap, segments)
    raise ExportError(
        f"Cannot write {path.name}: unsupported file type; use one of "
        f"{', '.join(SUPPORTED_SUFFIXES)}."
    )


def read_segmentation(
    path: str | Path,
) -> tuple[Volume, list[SegmentInfo], dict[str, str]]:
    """(labelmap Volume, segments, SAM2Refine_* fields) from a .seg.nrrd or a NIfTI labelmap
    (names from its .labels.json sidecar when there is one)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"Segmentation file not found: {path}. Check the path.")
    if path.name.lower().endswith(".seg.nrrd"):
        labelmap, segments = read_seg_nrrd(path)
        return labelmap, segments, read_seg_nrrd_fields(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(f"Cannot read {path}: give a .seg.nrrd or NIfTI labelmap.") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path} is not a 3D labelmap (size {image.GetSize()}).")
    labelmap = Volume.from_sitk(image)
    if not np.issubdtype(labelmap.voxels.dtype, np.integer):
        raise VolumeError(f"{path} has {labelmap.voxels.dtype} voxels; a labelmap needs integers.")
    sidecar = _labels_sidecar_path(path)
    table = json.loads(sidecar.read_text("utf-8"))["labels"] if sidecar.is_file() else {}
    values = sorted({int(v) for v in np.unique(labelmap.voxels) if v} | {int(k) for k in table})
    segments = []
    for index, value in enumerate(values):
        entry = table.get(str(value), {})
        name = entry.get("name") or f"Segment {value}"
        color = entry.get("color") or default_color(index, name)
        segments.append(SegmentInfo(name, value, tuple(float(c) for c in color),
                                    entry.get("terminology")))
    return labelmap, segments, {}
