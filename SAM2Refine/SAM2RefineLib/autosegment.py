"""Auto-segment results in the scene: the proposals' boxes as ROI nodes, each earlier stage's
masks in a segmentation node of its own, and the final prompts as the Logic's replay records.

MRML only. `AutoSegmentSteps` is the Logic's Auto-segment step; the functions are what its
`finish` step does in the scene.
"""

from __future__ import annotations

import numpy as np

from SAM2RefineLib import backends, prompts, segments
from SAM2RefineLib.segments import ALGORITHM_ATTRIBUTE
from SAM2RefineLib.tasks import Job
from SAM2RefineLib.undo import SegmentSnapshot, UndoEntry

STAGE_TITLES = {"unet": "proposals", "stage1": "stage 1", "stage2": "stage 2"}


class AutoSegmentSteps:
    """The Logic's Auto-segment step (mixed into `SAM2RefineLogicBase`, whose session,
    segments, prompt records and undo stack it uses)."""

    def autoSegmentJob(self, source, names=None, organs=None, stages: int = 2,
                       margin: int = 3, showStages: bool = True) -> Job:
        """Segment organs automatically: `source` (a U-Net checkpoint, or a label file whose
        labels `names` names: labels.json / dataset.json) proposes them and SAM 2 refines them
        in `stages` stages. One segment per organ (an unlocked segment of that name is
        replaced, a locked one left alone); the proposals' boxes become ROI nodes "<organ> box"
        and, with `showStages`, the earlier stages' masks get segmentation nodes of their own.
        One undo step."""
        self._requireSession()
        pipeline = backends.auto_segment_pipeline(self.session)
        session, volume = self.session, self.volume

        def run(progress, cancel):
            return pipeline(session, volume, source, names=names, organs=organs, stages=stages,
                            margin=margin, progress=progress, cancel=cancel)
        return Job("Auto-segment", run, lambda result: self._autoSegmented(result, showStages))

    def autoSegment(self, source, names=None, organs=None, stages: int = 2, margin: int = 3,
                    showStages: bool = True, progress=None, cancel=None) -> str:
        return self.autoSegmentJob(source, names, organs, stages, margin, showStages)(
            progress, cancel)

    def _autoSegmented(self, result, showStages: bool) -> str:
        entry, written, skipped = UndoEntry("Auto-segment"), {}, []
        final = self.stack.frames(result.final.label_volume.voxels)
        for name, organ in result.prompts.items():
            segmentId = segment_named(self.segmentationNode, name)
            if segmentId is not None and self.isSegmentLocked(segmentId):
                skipped.append(name)
                self.session.remove_object(organ.obj_id)
                continue
            if segmentId is None:
                segmentId = self.addSegment(name)
                entry.created_segment_ids.append(segmentId)
            current = self.segmentMask(segmentId)
            entry.snapshots.append(SegmentSnapshot.take(segmentId, current, self.stack))
            self._writeSlices(segmentId, current, dict(enumerate(final == organ.obj_id)))
            previous = self.objectIds.get(segmentId)
            if previous is not None and previous != organ.obj_id:
                self.session.remove_object(previous)
            self.objectIds[segmentId] = organ.obj_id
            for frame, record in prompt_records(
                    self.volume, self.stack, organ, result.unet.label_volume.voxels):
                self._prompts.setdefault((segmentId, frame), []).append(record)
                entry.prompt_keys.append((segmentId, frame))
            written[name] = organ.obj_id
        entry.created_node_ids += show_boxes(
            self.scene, self.volumeNode, self.volume, self.stack,
            {n: b for n, b in result.unet.boxes.items() if n in written})
        for stage in result.stages[:-1] if showStages else []:
            node = show_stage(self.scene, self.volumeNode, stage, written,
                              STAGE_TITLES[stage.name])
            entry.created_node_ids.append(node.GetID())
        self.undoStack.push(entry)
        if self.segmentationNode.GetAttribute(ALGORITHM_ATTRIBUTE) is None:  # nobody prompted
            self.segmentationNode.SetAttribute(ALGORITHM_ATTRIBUTE, "AUTOMATIC")
        locked = f"; left locked segment(s) alone: {', '.join(skipped)}" if skipped else ""
        return (f"Auto-segmented {len(written)} organ(s) from the {result.source} "
                f"({' / '.join(f'{s.name} {s.seconds:.0f} s' for s in result.stages)}){locked}.")


def segment_named(segmentation_node, name: str) -> str | None:
    """The ID of the segment called `name` (ignoring case and separators), or None."""
    from sam2refine import organ_key

    key = organ_key(name)
    for segment_id in segments.segment_ids(segmentation_node):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        if organ_key(segment.GetName()) == key:
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
