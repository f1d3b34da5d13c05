"""Segments and the label layers that hold them, as every reader returns and writer takes them.

A `Segmentation` is one or more label maps ("layers") on one voxel grid, as 3D Slicer keeps
segments: each segment is a label value in one layer, so overlapping segments live in
different layers. Formats that can hold overlaps (.seg.nrrd, DICOM-SEG) keep them; a single
label map (NIfTI) is made only when no voxel belongs to two segments (`Segmentation.labelmap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sam2refine.errors import ExportError
from sam2refine.image.volume import Volume

FIELD_PREFIX = "SAM2Refine_"  # custom .seg.nrrd header fields written by this package
KEPT_SLICER_FIELDS = ("Segmentation_ConversionParameters",)  # kept through a re-export


@dataclass
class SegmentInfo:
    """One segment: its display name, its value in the labelmap, RGB colour in 0..1.

    ``terminology`` is an optional Slicer terminology entry string (seven ``~``-separated
    fields, e.g. ``"Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^
    Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"``).
    ``layer`` is the label layer holding it (0 unless segments overlap).
    """

    name: str
    label: int
    color: tuple[float, float, float]
    terminology: str | None = None
    layer: int = 0


@dataclass(eq=False)
class Segmentation:
    """Label layers on one grid, their segments, and what the file said about them.

    ``fields``: ``SAM2Refine_*`` header fields (e.g. the DICOM series it was made on) and
    Slicer fields kept through a re-export. ``extent_offset``: where voxel (0, 0, 0) of the
    layers lies in the grid of the image the segmentation was made on (Slicer crops saved
    segmentations to their extent; i, j, k voxels).
    """

    layers: list[Volume]
    segments: list[SegmentInfo]
    fields: dict[str, str] = field(default_factory=dict)
    extent_offset: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ExportError("A segmentation needs at least one label layer.")
        if any(not layer.same_geometry(self.layers[0], tol=1e-6) for layer in self.layers):
            raise ExportError("The label layers of a segmentation must share one voxel grid.")

    @property
    def grid(self) -> Volume:
        """The first layer (every layer has its grid)."""
        return self.layers[0]

    def mask(self, segment: SegmentInfo) -> np.ndarray:
        """The segment's voxels as a [k, j, i] bool array."""
        return np.asarray(self.layers[segment.layer].voxels) == int(segment.label)

    def present(self) -> list[SegmentInfo]:
        """The segments with at least one voxel, in order."""
        values = [set(np.unique(layer.voxels).tolist()) for layer in self.layers]
        return [s for s in self.segments
                if s.layer < len(values) and int(s.label) in values[s.layer]]

    def overlap(self) -> tuple[str, str, int] | None:
        """(segment, segment, voxels) of the first pair of segments sharing voxels, or None."""
        if len(self.layers) < 2:
            return None
        filled = [np.asarray(layer.voxels) != 0 for layer in self.layers]
        for a in range(len(filled)):
            for b in range(a + 1, len(filled)):
                both = filled[a] & filled[b]
                if both.any():
                    va = self.layers[a].voxels[both]
                    vb = self.layers[b].voxels[both]
                    pair, count = _most_common_pair(va, vb)
                    return (self._name(a, pair[0]), self._name(b, pair[1]), count)
        return None

    def _name(self, layer: int, value: int) -> str:
        for seg in self.segments:
            if seg.layer == layer and int(seg.label) == int(value):
                return seg.name
        return f"label {value} of layer {layer}"

    def labelmap(self, purpose: str = "a single label map") -> tuple[Volume, list[SegmentInfo]]:
        """One label map holding every segment; layers that do not overlap are merged (their
        segments renumbered where values collide). Overlaps raise `ExportError`."""
        if len(self.layers) == 1:
            return self.grid, list(self.segments)
        found = self.overlap()
        if found is not None:
            a, b, count = found
            raise ExportError(
                f"Segments {a!r} and {b!r} overlap in {count} voxel(s); {purpose} holds one "
                "label per voxel. Export to .seg.nrrd or DICOM-SEG, which keep overlapping "
                "segments, or remove the overlap (e.g. in Slicer's Segment Editor)."
            )
        used = {int(s.label) for s in self.segments if s.layer == 0}
        merged = np.asarray(self.layers[0].voxels).astype(np.uint32)
        segments = [s for s in self.segments if s.layer == 0]
        for index in range(1, len(self.layers)):
            voxels = np.asarray(self.layers[index].voxels)
            for seg in (s for s in self.segments if s.layer == index):
                value = int(seg.label)
                if value in used:
                    value = max(used) + 1
                used.add(value)
                merged[voxels == int(seg.label)] = value
                segments.append(SegmentInfo(seg.name, value, seg.color, seg.terminology, 0))
        return self.grid.with_voxels(merged), segments


def _most_common_pair(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, int], int]:
    pairs, counts = np.unique(np.stack([a, b], axis=1), axis=0, return_counts=True)
    best = int(np.argmax(counts))
    return (int(pairs[best][0]), int(pairs[best][1])), int(counts.sum())


def smallest_unsigned_dtype(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ExportError(f"Label value {max_value} is too large; label values must fit in 32 bits.")


def validate_segments(segments: Sequence[SegmentInfo], layers: int = 1) -> None:
    """Names present and unique, label values >= 1 and unique per layer, colours in 0..1."""
    names: set[str] = set()
    labels: set[tuple[int, int]] = set()
    for seg in segments:
        if not isinstance(seg.name, str) or not seg.name.strip():
            raise ExportError(f"Segment with label {seg.label} has an empty name; name it.")
        if any(ch in seg.name for ch in "\r\n\0"):
            raise ExportError(f"Segment name {seg.name!r} contains a line break; remove it.")
        if (not isinstance(seg.label, int | np.integer) or isinstance(seg.label, bool)
                or seg.label < 1):
            raise ExportError(
                f"Segment {seg.name!r} has label {seg.label!r}; labels must be integers >= 1 "
                "(0 is background)."
            )
        if not isinstance(seg.layer, int | np.integer) or not 0 <= seg.layer < layers:
            raise ExportError(f"Segment {seg.name!r} is in layer {seg.layer!r}, but the "
                              f"segmentation has {layers} layer(s).")
        if len(seg.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in seg.color):
            raise ExportError(
                f"Segment {seg.name!r} has colour {seg.color!r}; give three RGB values in 0..1."
            )
        if seg.terminology is not None and (
            seg.terminology.count("~") != 6 or any(ch in seg.terminology for ch in "|\r\n\0")
        ):
            raise ExportError(
                f"Segment {seg.name!r} has an invalid terminology string {seg.terminology!r}; "
                "it needs seven '~'-separated fields and no '|' or line breaks."
            )
        if seg.name in names:
            raise ExportError(f"Two segments are named {seg.name!r}; segment names must be unique.")
        key = (int(seg.layer), int(seg.label))
        if key in labels:
            where = f" in layer {seg.layer}" if layers > 1 else ""
            raise ExportError(f"Two segments use label {seg.label}{where}; label values must be "
                              "unique.")
        names.add(seg.name)
        labels.add(key)


def prepare_layer(voxels: np.ndarray, segments: Sequence[SegmentInfo] | None,
                  layer: int = 0) -> np.ndarray:
    """Check one label layer against its segments; its voxels in the smallest unsigned type."""
    voxels = np.asarray(voxels)
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
        declared = {int(s.label) for s in segments if s.layer == layer}
        undeclared = sorted(present_labels - declared)
        if undeclared:
            shown = ", ".join(str(v) for v in undeclared[:20])
            more = f" and {len(undeclared) - 20} more" if len(undeclared) > 20 else ""
            where = f" (layer {layer})" if layer else ""
            raise ExportError(
                f"The labelmap{where} contains label values with no segment: {shown}{more}; "
                "declare a segment for each value or set those voxels to 0."
            )
        max_value = max(max_value, *declared, 0)
    return voxels.astype(smallest_unsigned_dtype(max_value), copy=False)


def as_layers(labelmap: Volume | Sequence[Volume]) -> list[Volume]:
    """A label map or a list of label layers as a list of layers."""
    return [labelmap] if isinstance(labelmap, Volume) else list(labelmap)


def empty_note(kept: Sequence[SegmentInfo], segments: Sequence[SegmentInfo]) -> str:
    """'; 1 empty segment left out: x' style note for a message (empty string if none)."""
    left = [s.name for s in segments if s not in kept]
    if not left:
        return ""
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return f"; {len(left)} empty segment(s) left out: {shown}"
