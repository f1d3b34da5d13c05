"""The prompts JSON the CLI reads: segments by name with points, boxes and mask files.

    {
      "coordinates": "ijk",                      # default for the file: ijk | lps | ras
      "segments": [
        {"name": "liver", "label": 1, "color": [0.87, 0.55, 0.42],
         "boxes":  [{"corners": [[40, 30, 12], [90, 80, 12]]}],
         "points": [{"position": [60, 55, 12], "positive": true},
                    {"position": [85, 40, 12], "positive": false}],
         "masks":  [{"file": "liver_coarse.nii.gz", "value": 1, "mode": "refine",
                     "slices": [12]}]}
      ],
      "range": [0, 29]                           # optional: propagate only over these slices
    }

A segment may have its own "range" (first and last slice), which overrides the file's for it,
and its own "coordinates". A box whose corners lie on different slices names its "slice".

The file is validated as data against one schema (`sam.prompts_schema`) before anything
runs; errors name the path of the bad field. Relative mask paths are relative to the JSON
file. A mask file is any label volume or .seg.nrrd (any grid: it is resampled onto the image
in physical space); `slices` default to the slice where the mask is largest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam2refine.errors import PromptError, SAM2RefineError
from sam2refine.image.labels import resample_to
from sam2refine.image.volume import Volume
from sam2refine.io.segmentation import read_segmentation_file
from sam2refine.sam.prompts_schema import validate_prompts
from sam2refine.sam.session import Session

_README = "See the prompts format in the README."


@dataclass
class SegmentPrompts:
    name: str
    label: int | None = None
    color: tuple[float, float, float] | None = None
    coordinates: str = "ijk"
    points: list[tuple[list[float], int]] = field(default_factory=list)
    boxes: list[tuple[list[float], list[float], int | None]] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)
    frame_range: tuple[int, int] | None = None  # overrides the file's range for this segment


@dataclass
class PromptsFile:
    segments: list[SegmentPrompts]
    frame_range: tuple[int, int] | None
    base_dir: Path
    # (segment index, mask index) -> that mask on the image grid, from `check_against`
    resolved: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def mask_files(self) -> list[Path]:
        """Every mask file the prompts read (inputs a command must never overwrite)."""
        return [_mask_path(spec, self.base_dir) for seg in self.segments for spec in seg.masks]


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise PromptError(f"the key {twice!r} appears twice in one object; keep one")
    return dict(pairs)


def read_prompts(path: str | Path) -> PromptsFile:
    """Parse and validate a prompts JSON file; errors name the path of the bad field."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise PromptError(f"Prompts file {what}: {path}. Give the prompts JSON file.")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"Prompts file {path} is not UTF-8 text; save it as UTF-8 JSON.") from exc
    except OSError as exc:
        raise PromptError(f"Cannot read the prompts file {path}: {exc.strerror or exc}.") from exc
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except PromptError as exc:
        raise PromptError(f"Prompts file {path}: {exc}. {_README}") from exc
    except RecursionError as exc:
        raise PromptError(f"Prompts file {path} is not valid JSON: it is nested too deeply. "
                          f"Fix the file. {_README}") from exc
    except (json.JSONDecodeError, ValueError) as exc:
        raise PromptError(f"Prompts file {path} is not valid JSON ({exc}); fix the file (a "
                          f"JSON checker shows where). {_README}") from exc
    document, problem = validate_prompts(data)
    if document is None:
        raise PromptError(f"Prompts file {path}: {problem}. {_README}")
    segments = []
    for seg in document.segments:
        prompts = SegmentPrompts(seg.name, seg.label, seg.color,
                                 seg.coordinates or document.coordinates)
        prompts.points = [(list(p.position), 1 if p.positive else 0) for p in seg.points]
        prompts.boxes = [(list(b.corners[0]), list(b.corners[1]), b.slice) for b in seg.boxes]
        prompts.masks = [m.model_dump(exclude_none=True) for m in seg.masks]
        prompts.frame_range = seg.range
        segments.append(prompts)
    return PromptsFile(segments, document.range, path.parent)


def check_against(prompts: PromptsFile, volume: Volume, num_frames: int) -> None:
    """Check the prompts against the image before any model work: slice ranges and mask
    slices inside the volume, every mask file readable, on this image and not empty. The
    masks are kept resampled onto the image for `apply_prompts`."""
    last = num_frames - 1
    ranges = [("range", prompts.frame_range)] + [
        (f"range of segment {s.name!r}", s.frame_range) for s in prompts.segments]
    for what, rng in ranges:
        if rng is not None and rng[1] > last:
            raise PromptError(f"The prompts' {what} [{rng[0]}, {rng[1]}] goes past the last "
                              f"slice ({last}); give slices 0 to {last}.")
    for n, seg in enumerate(prompts.segments):
        for *_, frame in seg.boxes:
            if frame is not None and frame > last:
                raise PromptError(f"Segment {seg.name!r}: box slice {frame} is past the last "
                                  f"slice ({last}); give slices 0 to {last}.")
        for m, spec in enumerate(seg.masks):
            try:
                prompts.resolved[(n, m)] = _mask_on(volume, spec, prompts.base_dir, last)
            except PromptError as exc:
                raise PromptError(f"Segment {seg.name!r}: {exc}") from exc


def apply_prompts(session: Session, prompts: PromptsFile) -> list[int]:
    """Create the segments in `session` and give it their prompts; returns the object ids."""
    if any(seg.masks for seg in prompts.segments) and not prompts.resolved:
        check_against(prompts, session.volume, session.num_frames)
    ids = []
    for n, seg in enumerate(prompts.segments):
        obj = session.add_object(seg.name, seg.label)
        ids.append(obj)
        try:
            for a, b, frame in seg.boxes:
                session.set_box(obj, a, b, seg.coordinates, frame)
            if seg.points:
                session.add_points(obj, [p for p, _ in seg.points], [v for _, v in seg.points],
                                   seg.coordinates)
            for m, spec in enumerate(seg.masks):
                session.set_mask_volume(obj, prompts.resolved[(n, m)], spec.get("slices"),
                                        spec.get("mode", "refine"))
        except PromptError as exc:
            raise PromptError(f"Segment {seg.name!r}: {exc}") from exc
    return ids


def propagation_groups(ids: list[int], prompts: PromptsFile
                       ) -> list[tuple[list[int], tuple[int, int] | None]]:
    """(object ids, slice range) to propagate together: segments with their own range apart,
    the others over the file's range."""
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for obj, seg in zip(ids, prompts.segments):
        groups.setdefault(seg.frame_range or prompts.frame_range, []).append(obj)
    return [(objs, rng) for rng, objs in groups.items()]


def _mask_path(spec: dict, base_dir: Path) -> Path:
    path = Path(spec["file"]).expanduser()
    return path if path.is_absolute() else base_dir / path


def _mask_on(volume: Volume, spec: dict, base_dir: Path, last: int) -> np.ndarray:
    """A mask prompt as a [k, j, i] bool array on the image grid."""
    path = _mask_path(spec, base_dir)
    slices = spec.get("slices")
    if slices is not None and max(slices) > last:
        raise PromptError(f"mask {path.name}: slice {max(slices)} is past the last slice "
                          f"({last}); give slices 0 to {last}.")
    try:
        segmentation = read_segmentation_file(path)
    except SAM2RefineError as exc:
        raise PromptError(f"mask file: {exc}") from exc
    value = spec.get("value")
    if value is None:
        mask = np.any([np.asarray(layer.voxels) > 0 for layer in segmentation.layers], axis=0)
    else:
        chosen = [s for s in segmentation.segments if int(s.label) == int(value)]
        mask = (segmentation.mask(chosen[0]) if chosen
                else np.asarray(segmentation.grid.voxels) == int(value))
    mask = segmentation.grid.with_voxels(mask.astype(np.uint8))
    try:
        on_image = resample_to(mask, volume, source=f"The mask file {path}").voxels > 0
    except SAM2RefineError as exc:
        raise PromptError(str(exc)) from exc
    if not on_image.any():
        which = "" if value is None else f" with value {value}"
        raise PromptError(f"Mask file {path} has no voxels{which} on this image.")
    return on_image
