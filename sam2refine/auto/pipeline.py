"""The automatic pipeline: a prompt source proposes organs, SAM 2 refines them in two stages.

`auto_segment` is what the CLI's `auto` command and the Slicer module's Auto-segment call.
It keeps every stage's output (the proposals, stage 1, stage 2) so a viewer can show them in
turn, and the prompts SAM 2 was finally given, which `save_prompts` writes as a prompts JSON
that `sam2refine segment --prompts` replays.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam2refine.auto.sources import Names, PromptSource, open_prompt_source
from sam2refine.auto.stages import (
    OrganPrompts,
    RefineSettings,
    StageResult,
    plan_organs,
    stage1,
    stage2,
)
from sam2refine.errors import PromptError, SAM2RefineError
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write
from sam2refine.io.colors import default_color
from sam2refine.io.segmentation import SegmentInfo, write_nifti_labelmap
from sam2refine.sam.session import Session

Progress = Callable[[int, int], None]
STAGES = (1, 2)
PROGRESS_STEPS = 100  # progress is reported as (stage * 100 + percent of that stage, total)


@dataclass
class AutoResult:
    """Every stage's output and the prompts SAM 2 was finally given, per organ."""

    volume: Volume
    unet: StageResult  # the prompt source's proposals (a U-Net or a label file)
    stage1: StageResult
    stage2: StageResult | None
    prompts: dict[str, OrganPrompts]
    source: str  # description of the prompt source
    skipped: list[str] = field(default_factory=list)  # organs with no voxels on this image

    @property
    def stages(self) -> list[StageResult]:
        return [s for s in (self.unet, self.stage1, self.stage2) if s is not None]

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    def segments(self) -> list[SegmentInfo]:
        """Name, label value (the session object id), colour of every segmented organ."""
        return [SegmentInfo(name, p.obj_id, default_color(n, name))
                for n, (name, p) in enumerate(self.prompts.items())]


def auto_segment(
    session_or_model,
    volume: Volume | None,
    source: PromptSource | str | Path,
    *,
    organs: Sequence[str] | None = None,
    stages: int = 2,
    margin: int | None = None,
    settings: RefineSettings | None = None,
    names: Names = None,
    intensity: str = "ct",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> AutoResult:
    """Segment `organs` (all the source proposes when None) automatically.

    `session_or_model`: an axial in-process `Session` (its volume is used; new objects are
    added to it) or a SAM 2 model (a new session on `volume` is opened). `source`: a
    `PromptSource`, or the path of a U-Net checkpoint or of a label file (`names` then
    names its labels). `margin` overrides `settings.margin` (slices beyond each organ's
    proposed z-extent that SAM 2 may fill).
    """
    if stages not in STAGES:
        raise PromptError(f"stages must be 1 or 2, not {stages}.")
    settings = settings or RefineSettings()
    if margin is not None:
        settings = RefineSettings(**{**settings.__dict__, "margin": int(margin)})
    session = _session_for(session_or_model, volume, intensity)
    if not isinstance(source, PromptSource):
        source = open_prompt_source(source, names, str(session.device))

    def stage_progress(index: int) -> Progress:
        def report(done: int, total: int) -> None:
            if progress is not None and total:
                progress(index * PROGRESS_STEPS + PROGRESS_STEPS * done // total,
                         (stages + 1) * PROGRESS_STEPS)
        return report

    start = time.perf_counter()
    proposals = source.proposals(session.volume, organs)
    seconds = time.perf_counter() - start
    plans = plan_organs(proposals, session, settings)
    if not plans:
        raise PromptError(f"The {source.description} found none of the organs on this image; "
                          "there is nothing to segment.")
    stage_progress(0)(1, 1)
    first = stage1(session, proposals, plans, settings, stage_progress(1), cancel)
    unet = _proposal_stage(session.volume, proposals, plans, seconds)
    second = None
    if stages == 2:
        second = stage2(session, proposals, plans, settings, stage_progress(2), cancel)
    skipped = [n for n in proposals.organs if n not in plans]
    return AutoResult(session.volume, unet, first, second, plans, source.description, skipped)


def _proposal_stage(volume: Volume, proposals, plans: dict[str, OrganPrompts],
                    seconds: float) -> StageResult:
    """The proposals as a stage: their masks labelled with the organs' object ids, and their
    boxes on the key slices (the boxes stage 1 prompted with)."""
    labels = np.zeros(volume.voxels.shape, np.uint16)
    boxes = {}
    for name, plan in plans.items():
        organ = proposals.organs[name]
        labels[organ.mask] = plan.obj_id
        boxes[name] = {f: organ.boxes[f] for f in plan.key_frames}
    return StageResult("unet", volume.with_voxels(labels), boxes, seconds)


def _session_for(session_or_model, volume: Volume | None, intensity: str) -> Session:
    if isinstance(session_or_model, Session):
        session = session_or_model
        if volume is not None and not volume.same_geometry(session.volume):
            raise PromptError("The volume given is not the session's volume.")
    elif hasattr(session_or_model, "track_step"):
        if volume is None:
            raise PromptError("Give the volume to segment along with the model.")
        session = Session(session_or_model, volume, axis="axial", intensity=intensity)
    else:
        raise SAM2RefineError(
            "Auto-segment needs an in-process SAM 2 session or model; it is not available on a "
            "remote server yet."
        )
    if session.stack.axis != "axial":
        raise PromptError("Auto-segment works on axial slices: start the session with the "
                          "axial axis.")
    return session


# ----- prompts file --------------------------------------------------------------------------
def prompts_json(result: AutoResult, mask_file: str | None = None) -> dict:
    """The final prompts as the prompts JSON `sam2refine segment --prompts` reads: voxel
    coordinates, one segment per organ with its own propagation range."""
    from sam2refine.image.slicing import slice_stack

    stack = slice_stack(result.volume, "axial")

    def ijk(frame: int, r: float, c: float) -> list[float]:
        return [float(v) for v in stack.frc_to_ijk([frame, r, c])]

    segments = []
    for info, (name, p) in zip(result.segments(), result.prompts.items()):
        seg = {"name": name, "label": p.obj_id, "color": list(info.color),
               "range": list(p.frame_range),
               "boxes": [{"corners": [ijk(f, b[0], b[1]), ijk(f, b[2], b[3])], "slice": f}
                         for f, b in sorted(p.boxes.items())],
               "points": [{"position": ijk(f, r, c), "positive": bool(v)}
                          for f, clicks in sorted(p.points.items()) for r, c, v in clicks]}
        if p.mask_frames:
            if mask_file is None:
                raise PromptError("Mask prompts need the proposals written next to the JSON.")
            seg["masks"] = [{"file": mask_file, "value": p.obj_id, "mode": "refine",
                             "slices": list(p.mask_frames)}]
        segments.append(seg)
    return {"coordinates": "ijk", "source": result.source, "segments": segments}


def save_prompts(result: AutoResult, path: str | Path) -> Path:
    """Write the final prompts as a prompts JSON (atomically); mask prompts also write the
    proposals as `<name>.proposals.nii.gz` next to it, which the JSON refers to."""
    path = Path(path)
    mask_file = None
    if any(p.mask_frames for p in result.prompts.values()):
        mask_file = f"{path.name.removesuffix('.json')}.proposals.nii.gz"
        write_nifti_labelmap(path.with_name(mask_file), result.unet.label_volume,
                             result.segments())
    text = json.dumps(prompts_json(result, mask_file), indent=1)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", "utf-8"))
