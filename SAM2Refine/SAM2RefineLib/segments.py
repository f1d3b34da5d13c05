"""Segments of a segmentation node as numpy masks on the input volume's voxel grid.

Masks are bool arrays indexed [k, j, i] like the volume's voxels. Reading resamples the
segment's binary labelmap onto the volume grid (nearest neighbour), so segmentations made
on another grid work too; writing replaces the segment's content with a mask on the volume
grid. A segment tagged locked is never written here: callers check `is_locked` first and
clip their masks with `locked_mask` so that locked voxels are never taken either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SAM2RefineLib.volumes import ijk_to_ras, matrix_to_vtk

ALGORITHM_ATTRIBUTE = "SAM2Refine.AlgorithmType"  # on the segmentation node: DICOM-SEG type

LOCKED_TAG = "SAM2Refine.Locked"
def add_segment(segmentation_node, name: str, color=None) -> str:
    """Add an empty segment with a colour and, for known structures, a terminology entry."""
    from sam2refine import default_color, slicer_terminology

    segmentation = segmentation_node.GetSegmentation()
    if color is None:
        color = default_color(segmentation.GetNumberOfSegments(), name)
    segment_id = segmentation.AddEmptySegment("", name, [float(c) for c in color])
    entry = slicer_terminology(name)
    if entry:
        segment = segmentation.GetSegment(segment_id)
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
    return segment_id


def tag(segment, name: str) -> str | None:
    """A segment tag's value, or None when the segment has no such tag."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def is_locked(segmentation_node, segment_id: str) -> bool:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise KeyError(f"No segment '{segment_id}' in '{segmentation_node.GetName()}'.")
    return tag(segment, LOCKED_TAG) == "1"


def set_locked(segmentation_node, segment_id: str, locked: bool) -> None:
    """Lock (AI steps never change it) or unlock a segment; kept as a segment tag."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise KeyError(f"No segment '{segment_id}' in '{segmentation_node.GetName()}'.")
    segment.SetTag(LOCKED_TAG, "1" if locked else "0")


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def reference_image(volume_node):
    """An empty vtkOrientedImageData with the volume's grid (extent and IJK -> RAS)."""
    import slicer

    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(matrix_to_vtk(ijk_to_ras(volume_node)))
    image.SetExtent(volume_node.GetImageData().GetExtent())
    return image


def _array_of(image) -> np.ndarray:
    from vtk.util import numpy_support

    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return scalars.reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)


def read_segment(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment's mask on the volume grid, [k, j, i] bool (a copy)."""
    import slicer

    dims = volume_node.GetImageData().GetDimensions()
    empty = np.zeros(dims[::-1], bool)
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise KeyError(f"No segment '{segment_id}' in '{segmentation_node.GetName()}'.")
    segmentation_node.CreateBinaryLabelmapRepresentation()
    labelmap = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        return empty
    x0, x1, y0, y1, z0, z1 = labelmap.GetExtent()
    if x1 < x0 or y1 < y0 or z1 < z0 or labelmap.GetPointData().GetScalars() is None:
        return empty
    resampled = slicer.vtkOrientedImageData()
    reference = reference_image(volume_node)
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, False)
    if not ok:
        raise RuntimeError(f"Cannot resample segment '{segment_id}' onto the volume grid.")
    e = resampled.GetExtent()
    out = empty
    if e[1] >= e[0] and e[3] >= e[2] and e[5] >= e[4]:
        out[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = _array_of(resampled) != 0
    return out


def write_segment(segmentation_node, segment_id: str, volume_node, mask: np.ndarray) -> None:
    """Replace a segment's content with `mask` ([k, j, i] on the volume grid)."""
    import slicer
    import vtk

    mask = np.asarray(mask, dtype=bool)
    dims = volume_node.GetImageData().GetDimensions()
    if mask.shape != tuple(dims[::-1]):
        raise ValueError(f"Mask of shape {mask.shape} does not fit the volume {dims[::-1]}.")
    image = reference_image(volume_node)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    _array_of(image)[:] = mask
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id,
                                            logic.MODE_REPLACE):
        raise RuntimeError(f"Cannot write segment '{segment_id}'.")


def locked_mask(segmentation_node, volume_node, exclude: tuple[str, ...] = ()) -> np.ndarray:
    """Union of every locked segment's voxels (except `exclude`), [k, j, i] bool."""
    dims = volume_node.GetImageData().GetDimensions()
    union = np.zeros(dims[::-1], bool)
    for segment_id in segment_ids(segmentation_node):
        if segment_id not in exclude and is_locked(segmentation_node, segment_id):
            union |= read_segment(segmentation_node, segment_id, volume_node)
    return union


def labelmap(segmentation_node, volume_node, volume):
    """All segments as one labelmap `Volume` (labels 1..n in segment order, locked segments
    painted last so they win overlaps) and their `SegmentInfo`s, for file exports."""
    from sam2refine import SegmentInfo

    ids = segment_ids(segmentation_node)
    labels = np.zeros(volume.voxels.shape, np.uint8 if len(ids) < 256 else np.uint16)
    infos = []
    order = sorted(range(len(ids)), key=lambda n: is_locked(segmentation_node, ids[n]))
    for n in order:
        labels[read_segment(segmentation_node, ids[n], volume_node)] = n + 1
    for n, segment_id in enumerate(ids):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        entry = tag(segment, segment.GetTerminologyEntryTagName())
        infos.append(SegmentInfo(segment.GetName(), n + 1, tuple(segment.GetColor()),
                                 entry or None))
    return volume.with_voxels(labels), infos


def write_seg_nrrd(segmentation_node, path: Path) -> Path:
    """Write `segmentation_node` to `path` with Slicer's .seg.nrrd writer, atomically."""
    import slicer

    from sam2refine import atomic_write

    def write(tmp: Path) -> None:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(segmentation_node):
            raise OSError(f"Slicer could not write {tmp}.")
    return atomic_write(path, write)
