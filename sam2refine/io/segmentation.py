"""Segmentation files in and out: .seg.nrrd (`io.seg_nrrd`) and NIfTI label maps, one reader
and one writer for every command.

Every writer keeps the geometry of the source volume (size, origin, spacing, direction) and
writes atomically, so an interrupted export never leaves a half-written file in place of a
good one. Every reader returns a `Segmentation` (label layers + segments + header fields);
label map files go through the engine's one label map reader (`image.labels.read_label_map`),
so a truncated or NaN-holding file is refused by every command alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sam2refine.errors import ExportError, PromptGeneratorError, VolumeError
from sam2refine.image.labels import read_label_map
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write, split_suffix
from sam2refine.io.colors import default_color
from sam2refine.io.label_names import LabelEntry, read_label_table, sidecar_path
from sam2refine.io.seg_nrrd import read_seg_nrrd_file, write_seg_nrrd
from sam2refine.io.segments import (
    FIELD_PREFIX,
    Segmentation,
    SegmentInfo,
    as_layers,
    prepare_layer,
    validate_segments,
)

SEG_NRRD_SUFFIX = ".seg.nrrd"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUPPORTED_SUFFIXES = (SEG_NRRD_SUFFIX, *NIFTI_SUFFIXES)

__all__ = ["FIELD_PREFIX", "SUPPORTED_SUFFIXES", "SegmentInfo", "Segmentation",
           "prepare_labelmap", "read_seg_nrrd", "read_seg_nrrd_fields", "read_segmentation",
           "read_segmentation_file", "write_nifti_labelmap", "write_seg_nrrd",
           "write_segmentation"]


def prepare_labelmap(labelmap: Volume, segments: Sequence[SegmentInfo] | None) -> np.ndarray:
    """Validate a single label map against its segments; return its voxels in the smallest
    unsigned type."""
    if segments is not None:
        validate_segments(segments)
    return prepare_layer(labelmap.voxels, segments)


def _labels_sidecar_path(path: Path) -> Path:
    base, _ = split_suffix(path)
    return path.with_name(f"{base}.labels.json")


def write_nifti_labelmap(
    path: Path, labelmap: Volume | Sequence[Volume], segments: list[SegmentInfo] | None = None
) -> Path:
    """Write a NIfTI labelmap; with ``segments`` also ``<name>.labels.json`` (label -> name/colour).

    NIfTI has no place for segment names, so the sidecar keeps them for tools that look for it.
    Label layers are merged when no voxel is in two segments; overlaps are refused.
    """
    import SimpleITK as sitk

    path = Path(path)
    layers = as_layers(labelmap)
    if len(layers) > 1:
        if segments is None:
            raise ExportError("Label layers need their segments to be merged into one map.")
        merged, segments = Segmentation(layers, segments).labelmap("a NIfTI label map")
    else:
        merged = layers[0]
    prepared = merged.with_voxels(prepare_labelmap(merged, segments))
    matrix = prepared.direction * np.asarray(prepared.spacing)[None, :]
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise ExportError("The labelmap geometry is invalid (singular or non-finite direction).")
    image = prepared.to_sitk()

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


def nifti_sidecar(path: Path) -> Path:
    """The names file `write_nifti_labelmap` writes next to ``path``."""
    return _labels_sidecar_path(Path(path))


def write_segmentation(
    path: Path,
    labelmap: Volume | Sequence[Volume],
    segments: list[SegmentInfo],
    *,
    fields: Mapping[str, str] | None = None,
    extent_offset: Sequence[int] = (0, 0, 0),
) -> Path:
    """Write ``labelmap`` (or label layers) in the format its suffix names: .seg.nrrd, .nii or
    .nii.gz (any case). ``fields`` (``SAM2Refine_*`` header fields) and ``extent_offset`` are
    kept by .seg.nrrd only."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(SEG_NRRD_SUFFIX):
        return write_seg_nrrd(path, labelmap, segments, fields=fields,
                              extent_offset=extent_offset)
    if name.endswith(NIFTI_SUFFIXES):
        return write_nifti_labelmap(path, labelmap, segments)
    raise ExportError(
        f"Cannot write {path.name}: unsupported file type; use one of "
        f"{', '.join(SUPPORTED_SUFFIXES)}."
    )


def read_segmentation_file(path: str | Path, *,
                           names: str | Path | Mapping[int, str] | None = None) -> Segmentation:
    """Any segmentation file as a `Segmentation`: a .seg.nrrd (layers, names, fields kept) or a
    label map file (NIfTI, NRRD, MetaImage) named by `names` (a names file or a {value: name}
    mapping), else by a names file next to it (<base>.labels.json, labels.json, dataset.json).
    `names` also renames the segments of a .seg.nrrd by label value."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"Segmentation file not found: {path}. Check the path.")
    if path.is_dir():
        raise VolumeError(f"{path} is a folder; give a segmentation file (.seg.nrrd, .nii.gz).")
    table = _names_table(names)
    if path.name.lower().endswith(SEG_NRRD_SUFFIX):
        segmentation = read_seg_nrrd_file(path)
        if table:
            for seg in segmentation.segments:
                if int(seg.label) in table:
                    seg.name = table[int(seg.label)].name
        return segmentation
    labelmap = read_label_map(path)
    if table is None:
        found = sidecar_path(path)
        table = read_label_table(found) if found is not None else {}
    values = sorted({int(v) for v in np.unique(labelmap.voxels) if v} | set(table))
    segments = []
    for index, value in enumerate(values):
        entry = table.get(value) or LabelEntry(f"Segment {value}")
        color = entry.color or default_color(index, entry.name)
        segments.append(SegmentInfo(entry.name, value, color, entry.terminology))
    if int(labelmap.voxels.min(initial=0)) < 0:
        raise VolumeError(f"The label file {path} has negative label values; a label map uses "
                          "0 for background and positive labels.")
    return Segmentation([labelmap], segments)


def _names_table(names: str | Path | Mapping[int, str] | None) -> dict[int, LabelEntry] | None:
    if names is None:
        return None
    if isinstance(names, Mapping):
        return {int(k): LabelEntry(str(v)) for k, v in names.items()}
    try:
        return read_label_table(names)
    except PromptGeneratorError as exc:
        raise VolumeError(str(exc)) from exc


def read_segmentation(path: str | Path) -> tuple[Volume, list[SegmentInfo], dict[str, str]]:
    """(labelmap Volume, segments, SAM2Refine_* fields) from a .seg.nrrd or a NIfTI labelmap
    (names from a names file next to it); layers are merged, overlaps refused."""
    segmentation = read_segmentation_file(path)
    labelmap, segments = _single(segmentation, path)
    return labelmap, segments, dict(segmentation.fields)


def read_seg_nrrd(path: Path) -> tuple[Volume, list[SegmentInfo]]:
    """Read a .seg.nrrd into one labelmap Volume ([k, j, i], LPS) and its segments; layers are
    merged where they do not overlap (`read_seg_nrrd_file` keeps them)."""
    return _single(read_seg_nrrd_file(path), path)


def _single(segmentation: Segmentation, path: str | Path) -> tuple[Volume, list[SegmentInfo]]:
    try:
        return segmentation.labelmap(f"reading {Path(path).name} as one label map")
    except ExportError as exc:
        raise VolumeError(str(exc)) from exc


def read_seg_nrrd_fields(path: Path) -> dict[str, str]:
    """The ``SAM2Refine_*`` custom header fields of a .seg.nrrd (empty if it has none)."""
    return dict(read_seg_nrrd_file(path).fields)
