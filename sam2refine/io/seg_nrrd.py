"""3D Slicer segmentation files (.seg.nrrd), read and written as Slicer itself does.

- Header text is UTF-8, as Slicer writes it, so segment names such as "Läsion – rechts" or
  "肝臓" survive (pynrrd alone would drop such characters on reading and refuse them on
  writing; it still parses the standard fields and decodes the voxels).
- Overlapping segments are label layers (a 4D "list domain domain domain" array), as Slicer
  saves them; each segment names its layer.
- Slicer crops a saved segmentation to its segments' extent: ``space origin`` is the cropped
  corner and ``Segmentation_ReferenceImageExtentOffset`` says where that corner lies in the
  source image grid. Both are read and written back unchanged.
- Every segment gets the extent of the whole stored array (Slicer reads a shared layer with
  its first segment's extent), and a terminology entry when its name is a known structure, so
  Slicer shows "Liver", not "Tissue".
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sam2refine.errors import ExportError, VolumeError
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write
from sam2refine.io.colors import default_color
from sam2refine.io.segments import (
    FIELD_PREFIX,
    KEPT_SLICER_FIELDS,
    Segmentation,
    SegmentInfo,
    as_layers,
    prepare_layer,
    validate_segments,
)
from sam2refine.io.terminology import GENERIC_CATEGORY, from_slicer_terminology, slicer_terminology

_GZIP_LEVEL = 6  # level 9 is ~2x slower on CT-sized labelmaps for ~20% smaller files
_NRRD_TYPES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.uint16): "unsigned short",
               np.dtype(np.uint32): "unsigned int"}
_HEADER_LIMIT = 16 << 20  # a header this long is not a segmentation


# ----- reading ---------------------------------------------------------------------------------
def _read_header_lines(handle) -> list[str]:  # noqa: ANN001 - a binary file object
    lines, size = [], 0
    while True:
        raw = handle.readline()
        size += len(raw)
        if not raw or size > _HEADER_LIMIT:
            raise VolumeError("it ends inside its header (the file is cut off or not NRRD)")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("latin-1")  # files of tools that wrote Latin-1
        if not line.strip():
            return lines
        lines.append(line)


def read_seg_nrrd_file(path: str | Path) -> Segmentation:
    """Read a .seg.nrrd (one or several layers, cropped or not) with its segments."""
    import nrrd

    path = Path(path).expanduser()
    if not path.is_file():
        raise VolumeError(f"Segmentation file not found: {path}. Check the path.")
    try:
        with open(path, "rb") as handle:
            lines = _read_header_lines(handle)
            header = nrrd.read_header(iter(lines))
            if header.get("data file") or header.get("datafile"):
                raise VolumeError("its voxels are in a separate data file, which is not read")
            data = nrrd.read_data(header, handle, str(path), index_order="F")
    except VolumeError as exc:
        raise VolumeError(f"Cannot read the segmentation {path}: {exc}. Save it again from "
                          "Slicer.") from exc
    except Exception as exc:  # pynrrd raises assorted types for malformed files
        raise VolumeError(f"Cannot read the segmentation {path}: it is damaged or incomplete "
                          f"({exc}). Save it again from Slicer.") from exc
    return _segmentation_from(path, header, data)


def read_seg_nrrd_header(path: str | Path) -> tuple[list[SegmentInfo], dict[str, str]]:
    """(segments, custom fields) of a .seg.nrrd from its header alone (no voxels read)."""
    import nrrd

    path = Path(path).expanduser()
    try:
        with open(path, "rb") as handle:
            header = nrrd.read_header(iter(_read_header_lines(handle)))
    except VolumeError as exc:
        raise VolumeError(f"Cannot read the segmentation {path}: {exc}. Save it again from "
                          "Slicer.") from exc
    except Exception as exc:  # pynrrd raises assorted types for malformed headers
        raise VolumeError(f"Cannot read the segmentation {path}: its header is damaged "
                          f"({exc}). Save it again from Slicer.") from exc
    sizes = list(header.get("sizes", []))
    layers = int(sizes[0]) if len(sizes) == 4 else 1
    fields = {k: str(v) for k, v in header.items()
              if k.startswith(FIELD_PREFIX) or k in KEPT_SLICER_FIELDS}
    return _segments_from(header, layers), fields


def _segmentation_from(path: Path, header: dict, data: np.ndarray) -> Segmentation:
    if data.ndim == 3:
        data = data[np.newaxis]
    elif data.ndim != 4:
        raise VolumeError(f"{path} is not a 3D segmentation (array of shape {data.shape}).")
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise VolumeError(f"{path} holds {data.dtype} voxels; a segmentation holds integers.")
    directions = np.asarray(header.get("space directions"), dtype=float)[-3:]
    space = header.get("space", "left-posterior-superior")
    to_lps = {"left-posterior-superior": np.ones(3),
              "right-anterior-superior": np.array([-1.0, -1.0, 1.0])}.get(space)
    if to_lps is None or directions.shape != (3, 3):
        raise VolumeError(f"{path} has no usable geometry (space {space!r}); save it again "
                          "from Slicer.")
    columns = directions.T * to_lps[:, None]  # columns: LPS step of one voxel along i, j, k
    spacing = np.linalg.norm(columns, axis=0)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float) * to_lps
    if not np.all(np.isfinite(columns)) or np.any(spacing <= 0) or not np.all(
            np.isfinite(origin)):
        raise VolumeError(f"{path} has a degenerate voxel spacing {tuple(spacing)} or origin; "
                          "save it again from Slicer.")
    layers = [Volume(np.ascontiguousarray(layer.transpose(2, 1, 0)), spacing, origin,
                     columns / spacing) for layer in data]
    segments = _segments_from(header, len(layers))
    fields = {k: str(v) for k, v in header.items()
              if k.startswith(FIELD_PREFIX) or k in KEPT_SLICER_FIELDS}
    offset = tuple(int(v) for v in str(header.get(
        "Segmentation_ReferenceImageExtentOffset", "0 0 0")).split()[:3])
    if len(offset) != 3:
        offset = (0, 0, 0)
    return Segmentation(layers, segments, fields, offset)  # type: ignore[arg-type]


def _segments_from(header: dict, layers: int) -> list[SegmentInfo]:
    indices = sorted({int(m.group(1)) for k in header
                      if (m := re.match(r"Segment(\d+)_", k))})
    segments = []
    for index in indices:
        def get(key: str, default: str = "", index: int = index) -> str:
            return str(header.get(f"Segment{index}_{key}", default))

        name = get("Name") or get("ID") or f"Segment_{index + 1}"
        try:
            color = tuple(float(c) for c in get("Color").split()[:3])
        except ValueError:
            color = ()
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            color = default_color(index, name)
        tags = dict(t.split(":", 1) for t in get("Tags").split("|") if ":" in t)
        terminology = tags.get("TerminologyEntry") or None
        if terminology is not None and terminology.count("~") != 6:
            terminology = None  # a format this reader does not know; the name still counts
        try:
            label, layer = int(get("LabelValue", "1")), int(get("Layer", "0"))
        except ValueError:
            label, layer = -1, -1
        if label < 1 or not 0 <= layer < layers:
            raise VolumeError(f"Segment {name!r} has label value {get('LabelValue')!r} in "
                              f"layer {get('Layer')!r}, which the file does not hold; save it "
                              "again from Slicer.")
        segments.append(SegmentInfo(name, label, color, terminology, layer))  # type: ignore[arg-type]
    return segments


# ----- writing ---------------------------------------------------------------------------------
def terminology_for(segment: SegmentInfo) -> str | None:
    """The segment's Slicer terminology, or the one its name maps to (Slicer's generic
    "Tissue" does not hide a known name, as in DICOM-SEG export)."""
    chosen = from_slicer_terminology(segment.terminology)
    if chosen is not None and chosen.category != GENERIC_CATEGORY:
        return segment.terminology
    return slicer_terminology(segment.name) or segment.terminology


def check_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    """Custom header fields: ``SAM2Refine_*`` keys (or kept Slicer fields), one line each."""
    extra = {str(k): str(v) for k, v in (fields or {}).items()}
    for key, value in extra.items():
        if key not in KEPT_SLICER_FIELDS and (
                not key.startswith(FIELD_PREFIX) or not key.replace("_", "").isalnum()):
            raise ExportError(f"Header field {key!r} must be {FIELD_PREFIX}<letters/digits>.")
        if any(ch in value for ch in "\r\n\0"):
            raise ExportError(f"Header field {key} = {value!r} must be one line of text.")
    return extra


def _vector(values: Sequence[float]) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def write_seg_nrrd(
    path: Path,
    labelmap: Volume | Sequence[Volume],
    segments: list[SegmentInfo],
    *,
    fields: Mapping[str, str] | None = None,
    extent_offset: Sequence[int] = (0, 0, 0),
) -> Path:
    """Write a Slicer segmentation (.seg.nrrd) on the labelmap's own grid, atomically.

    ``labelmap``: one label map, or label layers on one grid (segments name their layer).
    ``fields`` become custom header fields (``SAM2Refine_*``, e.g. the DICOM series the
    segmentation was made on) that Slicer ignores and `read_seg_nrrd_file` returns.
    """
    layers = as_layers(labelmap)
    validate_segments(segments, len(layers))
    arrays = [prepare_layer(layer.voxels, segments, n) for n, layer in enumerate(layers)]
    dtype = max((a.dtype for a in arrays), key=lambda d: d.itemsize)
    grid = Segmentation(layers, segments).grid  # checks the layers share one grid
    matrix = grid.direction * np.asarray(grid.spacing)[None, :]
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise ExportError("The labelmap geometry is invalid (singular or non-finite direction).")
    extra = check_fields(fields)
    offset = [int(v) for v in extent_offset]
    i, j, k = grid.shape_ijk
    many = len(arrays) > 1
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html",
             f"type: {_NRRD_TYPES[dtype]}", f"dimension: {4 if many else 3}",
             "space: left-posterior-superior",
             f"sizes: {f'{len(arrays)} ' if many else ''}{i} {j} {k}",
             "space directions: " + ("none " if many else "")
             + " ".join(_vector(matrix[:, a]) for a in range(3)),
             f"kinds: {'list ' if many else ''}domain domain domain"]
    if dtype.itemsize > 1:
        lines.append("endian: little")
    lines += ["encoding: gzip", f"space origin: {_vector(grid.origin)}",
              "Segmentation_ContainedRepresentationNames:=Binary labelmap|",
              "Segmentation_MasterRepresentation:=Binary labelmap",
              "Segmentation_ReferenceImageExtentOffset:=" + " ".join(map(str, offset))]
    lines += [f"{key}:={value}" for key, value in extra.items()]
    for n, seg in enumerate(segments):
        term = terminology_for(seg)
        color = " ".join(f"{float(c):.6g}" for c in seg.color)
        lines += [f"Segment{n}_Color:={color}", f"Segment{n}_ColorAutoGenerated:=0",
                  f"Segment{n}_Extent:=0 {i - 1} 0 {j - 1} 0 {k - 1}",
                  f"Segment{n}_ID:=Segment_{int(seg.label)}"
                  + (f"_{int(seg.layer)}" if seg.layer else ""),
                  f"Segment{n}_LabelValue:={int(seg.label)}",
                  f"Segment{n}_Layer:={int(seg.layer)}", f"Segment{n}_Name:={seg.name}",
                  f"Segment{n}_NameAutoGenerated:=0",
                  f"Segment{n}_Tags:=" + (f"TerminologyEntry:{term}|" if term else "|")]
    text = ("\n".join(lines) + "\n\n").encode("utf-8")
    stacked = (np.stack(arrays, axis=-1) if many else arrays[0]).astype(f"<{dtype.str[1:]}")

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(text)
            with gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=_GZIP_LEVEL,
                               mtime=0) as packed:
                for plane in stacked:  # one slice at a time: no second copy of the volume
                    packed.write(np.ascontiguousarray(plane).tobytes())

    return atomic_write(Path(path), _write)
