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

A segment may have its own "range" (first and last slice), which overrides the file's for it.

Relative mask paths are relative to the JSON file. A mask file is any label volume (any grid:
it is resampled onto the image in physical space); `slices` default to the slice where the
mask is largest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sam2refine.errors import PromptError
from sam2refine.image.labels import load_label_volume
from sam2refine.sam.session import Session


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


def read_prompts(path: str | Path) -> PromptsFile:
    """Parse and check a prompts JSON file; errors name the segment and the field."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"Prompts file not found: {path}.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"Prompts file {path} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise PromptError(f"{path} needs a top-level object with a 'segments' list.")
    default_coords = data.get("coordinates", "ijk")
    segments = [_segment(s, default_coords, i) for i, s in enumerate(data["segments"])]
    if not segments:
        raise PromptError(f"{path} has no segments to segment.")
    rng = data.get("range")
    return PromptsFile(segments, tuple(rng) if rng else None, path.parent)


def _segment(raw: dict, default_coords: str, index: int) -> SegmentPrompts:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise PromptError(f"Segment #{index + 1} needs a 'name'.")
    name = raw["name"]
    seg = SegmentPrompts(name, raw.get("label"), _color(raw.get("color"), name),
                         raw.get("coordinates", default_coords))
    try:
        for p in raw.get("points", []):
            seg.points.append((list(p["position"]), 1 if p.get("positive", True) else 0))
        for b in raw.get("boxes", []):
            a, c = b["corners"]
            seg.boxes.append((list(a), list(c), b.get("slice")))
        seg.masks = [dict(m) for m in raw.get("masks", [])]
        if raw.get("range") is not None:
            first, last = raw["range"]
            seg.frame_range = (int(first), int(last))
    except (KeyError, TypeError, ValueError) as exc:
        raise PromptError(f"Segment '{name}': malformed prompt ({exc!r}); see the README.") from exc
    if not (seg.points or seg.boxes or seg.masks):
        raise PromptError(f"Segment '{name}' has no points, boxes or masks.")
    if any("file" not in m for m in seg.masks):
        raise PromptError(f"Segment '{name}': every mask needs a 'file'.")
    return seg


def _color(raw: object, name: str) -> tuple[float, float, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 3:
        raise PromptError(f"Segment '{name}': color must be [r, g, b] in 0..1.")
    return (float(raw[0]), float(raw[1]), float(raw[2]))


def apply_prompts(session: Session, prompts: PromptsFile) -> list[int]:
    """Create the segments in `session` and give it their prompts; returns the object ids."""
    ids = []
    for seg in prompts.segments:
        obj = session.add_object(seg.name, seg.label)
        ids.append(obj)
        for a, b, frame in seg.boxes:
            session.set_box(obj, a, b, seg.coordinates, frame)
        if seg.points:
            session.add_points(obj, [p for p, _ in seg.points], [v for _, v in seg.points],
                               seg.coordinates)
        for spec in seg.masks:
            _apply_mask(session, obj, spec, prompts.base_dir)
    return ids


def propagation_groups(ids: list[int], prompts: PromptsFile
                       ) -> list[tuple[list[int], tuple[int, int] | None]]:
    """(object ids, slice range) to propagate together: segments with their own range apart,
    the others over the file's range."""
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for obj, seg in zip(ids, prompts.segments):
        groups.setdefault(seg.frame_range or prompts.frame_range, []).append(obj)
    return [(objs, rng) for rng, objs in groups.items()]


def _apply_mask(session: Session, obj: int, spec: dict, base_dir: Path) -> None:
    path = Path(spec["file"])
    path = path if path.is_absolute() else base_dir / path
    labels = load_label_volume(path, session.volume)
    value = spec.get("value")
    mask = labels.voxels > 0 if value is None else labels.voxels == int(value)
    if not mask.any():
        which = "" if value is None else f" with value {value}"
        raise PromptError(f"Mask file {path} has no voxels{which} on this image.")
    session.set_mask_volume(obj, mask, spec.get("slices"), spec.get("mode", "refine"))
