"""Auto-segment results in the scene: the proposals' boxes as ROI nodes, each earlier stage's
masks in a segmentation node of its own, and the final prompts as the Logic's replay records.

MRML only; the Logic's `autoSegmentJob` calls these from its `finish` step.
"""

from __future__ import annotations

import numpy as np

from SAM2RefineLib import prompts, segments

STAGE_TITLES = {"unet": "proposals", "stage1": "stage 1", "stage2": "stage 2"}


def segment_named(segmentation_node, name: str) -> str | None:
    """The ID of the segment called `name` (ignoring case and separators), or None."""
    from sam2refine.prompt_sources import normalize_name

    key = normalize_name(name)
    for segment_id in segments.segment_ids(segmentation_node):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        if normalize_name(segment.GetName()) == key:
            return segment_id
    return None


def show_boxes(scene, volume_node, volume, stack, boxes: dict) -> list[str]:
    """Locked ROI nodes "<organ> box" (with the slice when an organ has several) for boxes
    {organ: {frame: (r0, c0, r1, c1)}}; returns their node IDs."""
    ids = []
    for organ, by_frame in boxes.items():
        for frame, box in sorted(by_frame.items()):
            name = f"{organ} box" if len(by_frame) == 1 else f"{organ} box slice {frame}"
            roi = prompts.box_to_roi(scene, volume_node, volume, stack, frame, box, name)
            roi.SetLocked(True)
            ids.append(roi.GetID())
    return ids


def show_stage(scene, volume_node, stage, organs: dict[str, int], title: str):
    """A segmentation node "<volume> auto <stage>" holding one segment per organ (outlines
    only, so the final segments stay readable on top)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   f"{volume_node.GetName()} auto {title}")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    labels = stage.label_volume.voxels
    for name, obj_id in organs.items():
        segment_id = segments.add_segment(node, name)
        segments.write_segment(node, segment_id, volume_node, labels == obj_id)
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(0.0)
    display.SetVisibility3D(False)
    return node


def prompt_records(volume, stack, organ_prompts, proposal_labels: np.ndarray
                   ) -> list[tuple[int, tuple[str, tuple]]]:
    """(frame, replay record) for the prompts SAM 2 was finally given for one organ, in the
    Logic's record format (RAS coordinates), so that undoing a later prompt re-sends them."""
    def ras(frame, r, c):
        return [float(v) for v in volume.index_to_ras(stack.frc_to_ijk([frame, r, c]))]

    records = []
    frames = stack.frames(proposal_labels == organ_prompts.obj_id)
    for frame in organ_prompts.mask_frames:
        records.append((frame, ("mask", (frame, frames[frame].copy(), "refine"))))
    for frame, (r0, c0, r1, c1) in sorted(organ_prompts.boxes.items()):
        records.append((frame, ("box", (ras(frame, r0, c0), ras(frame, r1, c1), frame))))
    for frame, clicks in sorted(organ_prompts.points.items()):
        points = [ras(frame, r, c) for r, c, _ in clicks]
        records.append((frame, ("points", (points, [int(v) for _, _, v in clicks]))))
    return records
