"""DICOM Segmentation (DICOM-SEG) export that references the CT/MR series it was made on.

`export_dicom_seg` writes one BINARY Segmentation object (highdicom) with one segment per
labelmap value: SNOMED CT codes from `terminology`, algorithm type/name/version, the segment
colour, and references to every source instance. Empty frames and empty segments are
omitted. The labelmap is matched to the series through patient (LPS) space, so a labelmap
stored with flipped or permuted axes, or cropped to its extent, still lands on the right
pixels; any other grid is refused with the mismatch. Overlapping segments (label layers) are
kept: a BINARY SEG stores each segment's frames on their own. Names that are not ASCII are
written in UTF-8 (SpecificCharacterSet ISO_IR 192); a label longer than DICOM's 64 characters
is shortened with a warning. The series is read and matched by `io.dicom_reference`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sam2refine.errors import ExportError
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write
from sam2refine.io.dicom_reference import ReferenceSeries, map_to_reference, read_reference_series
from sam2refine.io.segments import (
    Segmentation,
    SegmentInfo,
    as_layers,
    prepare_layer,
    validate_segments,
)
from sam2refine.io.terminology import SegmentCodes, Term, codes_for_segment

log = logging.getLogger("sam2refine")

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
# ----- building the SEG ------------------------------------------------------------------------
def _coded(term: Term):
    from highdicom.sr import CodedConcept

    return CodedConcept(term.value, term.scheme, term.meaning)


def _description(number: int, seg: SegmentInfo, codes: SegmentCodes, algorithm_type: str,
                 algorithm):
    import highdicom as hd

    label = segment_label(seg.name)
    rgb = [min(255.0, max(0.0, float(c) * 255.0)) for c in seg.color]
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=_coded(codes.category),
        segmented_property_type=_coded(codes.type),
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        anatomic_regions=[_coded(codes.region)] if codes.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    if codes.type_modifier is not None:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(codes.type_modifier)]
    if codes.region is not None and codes.region_modifier is not None:
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
            _coded(codes.region_modifier)]
    return desc


def segment_label(name: str) -> str:
    """The SegmentLabel for a segment name: LO holds 64 characters, no backslash; validators
    count UTF-8 bytes, so a longer name is cut to 64 bytes (on a character boundary) + "..."."""
    label = name.replace("\\", "/")
    if len(label.encode("utf-8")) > 64:
        cut = label
        while len(cut.encode("utf-8")) > 61:
            cut = cut[:-1]
        log.warning("Segment name %r is longer than the 64 characters a DICOM-SEG label holds; "
                    "it is written as %r.", name, cut + "...")
        label = cut + "..."
    return label


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom logs every copied module at INFO; keep that out of the user's terminal."""
    logger = logging.getLogger("highdicom")
    previous = logger.level
    logger.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(previous)


def _segment_frames(view: np.ndarray, segments: list[SegmentInfo]) -> tuple:
    """(frames of segment numbers, segments kept) of one label map, frame by frame with no
    per-segment copies. Segments with no voxel are left out (numbers stay consecutive, as
    BINARY SEGs need)."""
    present = set()
    for frame in view:
        present.update(int(v) for v in np.unique(frame))
    kept = [s for s in segments if int(s.label) in present]
    lut = np.zeros(max(present) + 1, dtype=np.uint8 if len(kept) < 256 else np.uint16)
    for number, seg in enumerate(kept, start=1):
        lut[int(seg.label)] = number
    frames = np.empty(view.shape, dtype=lut.dtype)
    for k, frame in enumerate(view):
        frames[k] = lut[frame]
    return frames, kept


def _overlapping_frames(views: list[np.ndarray], segments: list[SegmentInfo]) -> tuple:
    """(frames x rows x columns x segments bool array, segments kept) for segments that
    overlap: each segment has its own plane, as a BINARY SEG stores it."""
    kept = [s for s in segments if np.any(views[s.layer] == int(s.label))]
    planes = np.zeros((*views[0].shape, len(kept)), dtype=bool)
    for number, seg in enumerate(kept):
        planes[..., number] = views[seg.layer] == int(seg.label)
    return planes, kept


def _character_set(texts: Sequence[str | None]) -> str | None:
    """ISO_IR 192 (UTF-8) when our own text is not ASCII, else the source's character set."""
    if all((t or "").isascii() for t in texts):
        return None  # highdicom copies the source's SpecificCharacterSet
    return "ISO_IR 192"


def export_dicom_seg(
    labelmap: Volume | Sequence[Volume],
    segments: list[SegmentInfo],
    reference: str | Path | ReferenceSeries,
    out_path: str | Path,
    *,
    algorithm_type: str = "SEMIAUTOMATIC",
    algorithm_name: str = "SAM2Refine",
    algorithm_version: str | None = None,
    series_description: str = "SAM2Refine segmentation",
    series_number: int = 300,
    content_creator_name: str | None = None,
    series_uid: str | None = None,
) -> Path:
    """Write ``labelmap`` as a DICOM-SEG referencing the series in ``reference``; returns the path.

    ``labelmap`` is one label map, or label layers on one grid (overlapping segments, each
    `SegmentInfo.layer` naming its layer). ``series_uid`` picks the series when the folder
    holds several. ``algorithm_type`` is AUTOMATIC for a fully automatic result,
    SEMIAUTOMATIC once a person has prompted or corrected it (MANUAL drawn by hand). Segments
    absent from the labelmap are left out; the file is written atomically.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm_codes

    from sam2refine.version import __version__

    algorithm_type = str(algorithm_type).upper()
    if algorithm_type not in ALGORITHM_TYPES:
        raise ExportError(f"Algorithm type {algorithm_type!r} is not one of "
                          f"{', '.join(ALGORITHM_TYPES)}.")
    layers = as_layers(labelmap)
    validate_segments(segments, len(layers))
    layers = [layer.with_voxels(prepare_layer(layer.voxels, segments, n))
              for n, layer in enumerate(layers)]
    segmentation = Segmentation(layers, list(segments))
    if segmentation.overlap() is None:  # layers that do not overlap travel as one label map
        merged, segments = segmentation.labelmap()
        layers = [merged.with_voxels(prepare_layer(merged.voxels, None))]
    ref = (reference if isinstance(reference, ReferenceSeries)
           else read_reference_series(reference, series_uid))
    views = [map_to_reference(layer, ref) for layer in layers]
    if len(views) == 1:
        frames, kept = _segment_frames(views[0], segments)
    else:
        frames, kept = _overlapping_frames(views, segments)
    if not kept:
        raise ExportError("The segmentation is empty (no segment has a voxel): nothing to export.")
    for seg in segments:
        if seg not in kept:
            log.warning("Segment %r is empty; it is left out of the DICOM-SEG.", seg.name)

    algorithm = None if algorithm_type == "MANUAL" else hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version or __version__,
        family=dcm_codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, seg in enumerate(kept, start=1):
        codes = codes_for_segment(seg.name, seg.terminology)
        if codes.is_generic:
            log.warning("No SNOMED CT code known for segment %r: coded as generic 'Tissue'.",
                        seg.name)
        descriptions.append(_description(number, seg, codes, algorithm_type, algorithm))
    charset = _character_set([*(d.SegmentLabel for d in descriptions), series_description,
                                   content_creator_name])
    arguments = dict(
        source_images=ref.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="SAM2Refine",
        manufacturer_model_name="sam2refine",
        software_versions=__version__,
        device_serial_number="1",
        content_label="SEGMENTATION",
        content_description=series_description[:64] or None,
        content_creator_name=content_creator_name,
        series_description=series_description[:64] or None,
        omit_empty_frames=True,
        **({"specific_character_set": charset} if charset else {}),
    )
    try:
        with _quiet_highdicom():
            seg_dataset = hd.seg.Segmentation(**arguments)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExportError(f"Cannot build the DICOM-SEG from {ref.folder}: {exc}") from exc
    return atomic_write(Path(out_path),
                        lambda tmp: seg_dataset.save_as(tmp, enforce_file_format=True))
