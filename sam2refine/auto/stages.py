"""The two SAM 2 refinement stages of the automatic pipeline (as in RFMedSAM 2), on a `Session`.

Stage 1: per organ, prompt SAM 2 on key slices with the proposal's box (or its mask, which
SAM 2 refines), then propagate both ways, but only over the proposal's z-extent plus a margin:
left alone, SAM 2 keeps tracking well past an organ's ends.
Stage 2: re-prompt from stage 1's result: key-slice boxes refreshed from the stage-1 mask,
positive clicks where the proposal says "organ" and stage 1 does not, negative clicks where
stage 1 says "organ" and the proposal does not (at the largest disagreements), then
propagate again within the same limit.

Each stage's output is kept as a `StageResult`; the prompts SAM 2 was last given per organ are
kept as `OrganPrompts` (what `auto.save_prompts` writes for replay).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from sam2refine.errors import CancelledError, PromptError
from sam2refine.image.volume import Volume
from sam2refine.sam.prompting import mask_box_and_interior
from sam2refine.sam.session import Session

Box = tuple[int, int, int, int]  # inclusive row0, col0, row1, col1 on one axial frame
Click = tuple[int, int, int]  # row, col, 1 = include / 0 = exclude
Progress = Callable[[int, int], None]
PROMPT_KINDS = ("box", "mask")


@dataclass(frozen=True)
class RefineSettings:
    """How the stages prompt SAM 2. Frame counts are axial slices."""

    margin: int = 3  # slices beyond the proposal's z-extent that SAM 2 may fill
    key_every: int = 12  # long organs get a key slice every this many slices
    min_key_area: float = 0.3  # ... where the organ is at least this fraction of its largest
    prompt: str = "box"  # stage 1: "box", or "mask" (the proposal's mask, refined by SAM 2)
    max_clicks: int = 2  # stage 2: at most this many positive and this many negative clicks
    min_error_voxels: int = 20  # smaller disagreements get no click
    min_box_iou: float = 0.5  # a refreshed box further than this from the proposal's is ignored

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_KINDS:
            raise PromptError(f"Unknown stage-1 prompt '{self.prompt}'; use one of "
                              f"{PROMPT_KINDS}.")
        if self.margin < 0 or self.key_every < 1:
            raise PromptError("The margin must be >= 0 slices and key_every >= 1 slice.")


@dataclass
class OrganPrompts:
    """What SAM 2 was last given for one organ, in axial frame coordinates."""

    name: str
    label: int  # the organ's label in the proposals
    frame_range: tuple[int, int]  # inclusive: SAM 2 never fills slices outside it
    key_frames: list[int]
    obj_id: int = 0  # session object (and output label value), set by stage 1
    boxes: dict[int, Box] = field(default_factory=dict)
    points: dict[int, list[Click]] = field(default_factory=dict)
    mask_frames: list[int] = field(default_factory=list)  # slices prompted with the mask


@dataclass
class StageResult:
    """One stage's output: labels on the image grid ([k, j, i] uint16, values = organ ids),
    the boxes it prompted with per organ and frame, its clicks, and how long it took."""

    name: str
    label_volume: Volume
    boxes: dict[str, dict[int, Box]]
    seconds: float
    points: dict[str, dict[int, list[Click]]] = field(default_factory=dict)


# ----- planning ------------------------------------------------------------------------------
def allowed_range(extent: tuple[int, int], margin: int, num_frames: int) -> tuple[int, int]:
    """The proposal's z-extent widened by `margin` slices, clipped to the volume."""
    return max(0, extent[0] - margin), min(num_frames - 1, extent[1] + margin)


def key_frames(mask_frames: np.ndarray, every: int, min_area: float) -> list[int]:
    """The slice where the organ is largest, plus one every `every` slices either side while
    the organ there keeps at least `min_area` of that largest area (long organs)."""
    areas = mask_frames.reshape(len(mask_frames), -1).sum(1)
    best = int(areas.argmax())
    keys = [best]
    for step in (-every, every):
        f = best + step
        while 0 <= f < len(areas) and areas[f] > 0 and areas[f] >= min_area * areas[best]:
            keys.append(f)
            f += step
    return sorted(keys)


def plan_organs(proposals, session: Session, settings: RefineSettings) -> dict[str, OrganPrompts]:
    """Key slices and allowed range of every proposed organ that has voxels on the image."""
    plans = {}
    for name, organ in proposals.organs.items():
        if organ.z_extent is None:
            continue
        frames = session.stack.frames(organ.mask)
        keys = key_frames(frames, settings.key_every, settings.min_key_area)
        rng = allowed_range(organ.z_extent, settings.margin, session.num_frames)
        plans[name] = OrganPrompts(name, int(organ.label), rng, keys)
    return plans


# ----- the stages ----------------------------------------------------------------------------
def stage1(session: Session, proposals, plans: dict[str, OrganPrompts],
           settings: RefineSettings, progress: Progress | None = None,
           cancel: threading.Event | None = None) -> StageResult:
    """Prompt every planned organ (a new session object each) on its key slices with the
    proposal's box or mask, and propagate it over its allowed range."""
    start = time.perf_counter()
    for name, plan in plans.items():
        organ = proposals.organs[name]
        plan.obj_id = _new_object(session, name, plan.label)
        frames = session.stack.frames(organ.mask)
        for f in plan.key_frames:
            _check_cancel(cancel)
            if settings.prompt == "mask":
                session.set_mask(plan.obj_id, f, frames[f], "refine")
                plan.mask_frames.append(f)
            else:
                plan.boxes[f] = _set_box(session, plan.obj_id, f, organ.boxes[f])
    _propagate_each(session, plans, progress, cancel)
    boxes = {n: {f: proposals.organs[n].boxes[f] for f in p.key_frames} for n, p in plans.items()}
    return StageResult("stage1", label_volume(session, plans), boxes,
                       time.perf_counter() - start)


def stage2(session: Session, proposals, plans: dict[str, OrganPrompts],
           settings: RefineSettings, progress: Progress | None = None,
           cancel: threading.Event | None = None) -> StageResult:
    """Re-prompt every organ from its stage-1 result (refreshed key-slice boxes, corrective
    clicks where stage 1 and the proposal disagree) and propagate again."""
    start = time.perf_counter()
    clicks_by_organ = {}
    for name, plan in plans.items():
        _check_cancel(cancel)
        organ = proposals.organs[name]
        stack = session.stack
        current = stack.frames(session.object_mask(plan.obj_id))
        proposed = stack.frames(organ.mask)
        inside = np.zeros(len(current), bool)
        inside[plan.frame_range[0]: plan.frame_range[1] + 1] = True
        for f in plan.key_frames:
            box = refreshed_box(current[f], organ.boxes[f], settings.min_box_iou)
            plan.boxes[f] = _set_box(session, plan.obj_id, f, box)
        plan.mask_frames.clear()  # a box replaces the mask prompt on its slice
        missed = proposed & ~current & inside[:, None, None]
        extra = current & ~proposed & inside[:, None, None]
        clicks = corrective_clicks(missed, extra, settings.max_clicks, settings.min_error_voxels)
        if clicks:
            frc = [[f, r, c] for f, group in sorted(clicks.items()) for r, c, _ in group]
            values = [v for _, group in sorted(clicks.items()) for _, _, v in group]
            session.add_points(plan.obj_id, frc, values, coords="slice")
        for f, group in sorted(clicks.items()):
            plan.points.setdefault(f, []).extend(group)
        clicks_by_organ[name] = clicks
    _propagate_each(session, plans, progress, cancel)
    boxes = {n: dict(p.boxes) for n, p in plans.items()}
    return StageResult("stage2", label_volume(session, plans), boxes,
                       time.perf_counter() - start, clicks_by_organ)


# ----- prompts from masks --------------------------------------------------------------------
def box_of(mask2d: np.ndarray) -> Box | None:
    """Inclusive bounding box of a 2D mask; None when empty."""
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two inclusive boxes."""
    rows = min(a[2], b[2]) - max(a[0], b[0]) + 1
    cols = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(rows, 0) * max(cols, 0)

    def area(x: Box) -> int:
        return (x[2] - x[0] + 1) * (x[3] - x[1] + 1)
    return inter / float(area(a) + area(b) - inter)


def refreshed_box(stage_mask: np.ndarray, proposal_box: Box, min_iou: float) -> Box:
    """The stage-1 mask's box on a key slice, unless it is empty or strays from the
    proposal's box (IoU below `min_iou`): then the proposal's box is kept."""
    box = box_of(stage_mask)
    if box is None or box_iou(box, proposal_box) < min_iou:
        return proposal_box
    return box


def corrective_clicks(missed: np.ndarray, extra: np.ndarray, max_clicks: int,
                      min_voxels: int) -> dict[int, list[Click]]:
    """Clicks by frame: a positive one inside each of the `max_clicks` largest connected
    regions of `missed` (N, H, W), a negative one inside each of the largest of `extra`;
    each on the slice where its region is largest, at the region's most interior pixel."""
    clicks: dict[int, list[Click]] = {}
    for region, label in ((missed, 1), (extra, 0)):
        for component in largest_components(region, max_clicks, min_voxels):
            f = int(component.reshape(len(component), -1).sum(1).argmax())
            _, (r, c) = mask_box_and_interior(component[f])
            clicks.setdefault(f, []).append((r, c, label))
    return clicks


def largest_components(mask: np.ndarray, count: int, min_voxels: int) -> list[np.ndarray]:
    """The `count` largest 26-connected components of a 3D mask with >= `min_voxels` voxels."""
    if count <= 0 or not mask.any():
        return []
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, np.uint8))
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(image, True),
                                   minimumObjectSize=int(min_voxels), sortByObjectSize=True)
    array = sitk.GetArrayFromImage(labels)
    return [array == n for n in range(1, min(count, int(array.max())) + 1)]


# ----- helpers -------------------------------------------------------------------------------
def label_volume(session: Session, plans: dict[str, OrganPrompts]) -> Volume:
    """The session's labels (overlaps resolved by SAM 2's logits) for the planned organs only."""
    labels = session.label_volume()
    ids = [p.obj_id for p in plans.values()]
    voxels = np.where(np.isin(labels.voxels, ids), labels.voxels, 0).astype(np.uint16)
    return labels.with_voxels(voxels)


def _new_object(session: Session, name: str, preferred_id: int) -> int:
    """A new session object for an organ: its proposal label as id (and output label value)
    and its name, or the next free id / a numbered name when the session has them already."""
    taken = {o.name for o in session.describe()}
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name} ({n})", n + 1
    ids = set(session.objects)
    obj_id = preferred_id if 0 < preferred_id < 65536 and preferred_id not in ids else None
    return session.add_object(unique, obj_id)


def _set_box(session: Session, obj_id: int, frame: int, box: Box) -> Box:
    """Box prompt in frame coordinates; a box one pixel thin is widened (SAM 2 needs area)."""
    r0, c0, r1, c1 = box
    h, w = session.stack.height, session.stack.width
    if r1 == r0:
        r0, r1 = (r0, r0 + 1) if r0 + 1 < h else (r0 - 1, r0)
    if c1 == c0:
        c0, c1 = (c0, c0 + 1) if c0 + 1 < w else (c0 - 1, c0)
    session.set_box(obj_id, (frame, r0, c0), (frame, r1, c1), coords="slice")
    return r0, c0, r1, c1


def _propagate_each(session: Session, plans: dict[str, OrganPrompts],
                    progress: Progress | None, cancel: threading.Event | None) -> None:
    """Propagate each organ over its own range; progress counts slices over all organs."""
    total = sum(p.frame_range[1] - p.frame_range[0] + 1 for p in plans.values())
    done = 0
    for plan in plans.values():
        def report(n: int, _total: int, offset: int = done) -> None:
            if progress is not None:
                progress(min(offset + n, total), total)
        session.propagate([plan.obj_id], frame_range=plan.frame_range, progress=report,
                          cancel=cancel)
        done += plan.frame_range[1] - plan.frame_range[0] + 1
        if progress is not None:
            progress(min(done, total), total)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("Auto-segment cancelled.")
