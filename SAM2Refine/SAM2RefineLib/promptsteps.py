"""Prompt steps: clicks from a segment's point lists, a box from an ROI (a 3D one also limits
the segment's propagation), a mask from a segment's voxels. Each answers with its slices'
masks, written into the segment (never over a locked one) as one undo step. A mixin of the
Logic (its session, segments, prompt records and undo stack)."""

from __future__ import annotations

import numpy as np

from SAM2RefineLib import promptnodes, prompts, segments
from SAM2RefineLib.segments import ALGORITHM_ATTRIBUTE
from SAM2RefineLib.tasks import Task, follow
from SAM2RefineLib.undo import SegmentSnapshot, UndoEntry


class PromptSteps:
    """The Logic's prompt steps."""

    def pointNodes(self, segmentId: str):
        """The (include, exclude) point lists of a segment, coloured like it."""
        return promptnodes.point_nodes(self.scene, self._segmentation(), segmentId)

    def addPointsTask(self, segmentId: str, positiveNode=None, negativeNode=None) -> Task:
        """Send the clicks not sent yet (the segment's own point lists by default); one
        prompt per slice they fall on."""
        self._checkIdle()
        self._checkEditable(segmentId)
        if positiveNode is None and negativeNode is None:
            positiveNode, negativeNode = self.pointNodes(segmentId)

        def body(task):
            with self._working(task):
                yield from self._sessionSteps(task)
                groups = prompts.group_points(self.volumeNode, self.volume, self.stack,
                                              positiveNode, negativeNode)
                if not groups:
                    raise ValueError("Place a point on the image first.")
                objId = yield from self._objectSteps(task, segmentId)
                results = yield from follow(task, self.jobs.add_points(
                    objId, [p for g in groups for p in g.points_frc],
                    [v for g in groups for v in g.labels], coords="slice"))
                self._checkInputs()
                records = [("points", (g.points_frc, g.labels)) for g in groups]
                entry = self._applySlices(segmentId, results, records, "Points")
                entry.sent_points = [p for g in groups for p in g.point_ids]
                for nodeId in {n for n, _ in entry.sent_points}:
                    prompts.mark_sent(self.scene.GetNodeByID(nodeId),
                                      [p for n, p in entry.sent_points if n == nodeId])
                return results
        return Task("Point prompt", body)

    def addPoints(self, segmentId: str, positiveNode=None, negativeNode=None):
        return self.addPointsTask(segmentId, positiveNode, negativeNode).run()

    def setBoxTask(self, segmentId: str, roiNode, frame: int | None = None) -> Task:
        """Box prompt from an ROI: its extent on `frame`, or on the slice through its centre.
        An ROI spanning several slices also limits the segment's propagation to them."""
        self._checkIdle()
        self._checkEditable(segmentId)

        def body(task):
            with self._working(task):
                yield from self._sessionSteps(task)
                cornerA, cornerB, onFrame = prompts.roi_box(self.volumeNode, self.volume,
                                                            self.stack, roiNode, frame)
                first, last = prompts.roi_frames(self.volumeNode, self.volume, self.stack,
                                                 roiNode)
                objId = yield from self._objectSteps(task, segmentId)
                result = yield from follow(task, self.jobs.set_box(
                    objId, cornerA, cornerB, coords="ras", frame=onFrame))
                self._checkInputs()
                entry = self._applySlices(segmentId, [result],
                                          [("box", (cornerA, cornerB, onFrame))], "Box")
                if roiNode.GetAttribute(promptnodes.ROLE) == "box":
                    entry.created_node_ids.append(roiNode.GetID())
                if last > first:
                    entry.previous_ranges[segmentId] = self.segmentRanges.get(segmentId)
                    self.segmentRanges[segmentId] = (first, last)
                    self.saveParameters()
                return result
        return Task("Box prompt", body)

    def setBox(self, segmentId: str, roiNode, frame: int | None = None):
        return self.setBoxTask(segmentId, roiNode, frame).run()

    def setMaskFromSegmentTask(self, segmentId: str, sourceSegmentId: str | None = None,
                               frames=None, mode: str = "refine", showBoxes: bool = True
                               ) -> Task:
        """Mask prompt from a segment's voxels (the segment itself by default), on `frames` or
        on the slice where it is largest. In refine mode the box SAM 2 is given is shown."""
        self._checkIdle()
        self._checkEditable(segmentId)
        source = self.segmentMask(sourceSegmentId or segmentId)
        frames = None if frames is None else [int(f) for f in frames]

        def body(task):
            with self._working(task):
                yield from self._sessionSteps(task)
                objId = yield from self._objectSteps(task, segmentId)
                results = yield from follow(task, self.jobs.set_mask_volume(
                    objId, source, frames=frames, mode=mode))
                self._checkInputs()
                sliced = self.stack.frames(source)
                records = [("mask", (r.frame, sliced[r.frame].copy(), mode)) for r in results]
                entry = self._applySlices(segmentId, results, records, "Mask")
                for r in results if showBoxes and mode == "refine" else ():
                    box = prompts.box_of_mask(sliced[r.frame])
                    roi = promptnodes.new_box_node(self.scene, self.segmentationNode, segmentId)
                    roi.SetName(f"{self._segmentName(segmentId)} box slice {r.frame}")
                    prompts.box_to_roi(self.scene, self.volumeNode, self.volume, self.stack,
                                       r.frame, box, roi.GetName(), roi)
                    roi.SetLocked(True)
                    entry.created_node_ids.append(roi.GetID())
                return results
        return Task("Mask prompt", body)

    def setMaskFromSegment(self, segmentId: str, sourceSegmentId: str | None = None,
                           frames=None, mode: str = "refine", showBoxes: bool = True):
        return self.setMaskFromSegmentTask(segmentId, sourceSegmentId, frames, mode,
                                           showBoxes).run()

    def _applySlices(self, segmentId, results, records, label) -> UndoEntry:
        """Write prompt results (one slice each) into the segment, with an undo entry."""
        current = self.segmentMask(segmentId)
        entry = UndoEntry(f"{label} on {self._segmentName(segmentId)}")
        for result in results:
            entry.snapshots.append(SegmentSnapshot.take(segmentId, current, self.stack,
                                                        result.frame))
        for result, record in zip(results, records):
            self._prompts.setdefault((segmentId, result.frame), []).append(record)
            entry.prompt_keys.append((segmentId, result.frame))
        self._writeSlices(segmentId, current, {r.frame: r.mask for r in results})
        self.undoStack.push(entry)
        self.segmentationNode.SetAttribute(ALGORITHM_ATTRIBUTE, "SEMIAUTOMATIC")  # a person
        return entry

    def _writeSlices(self, segmentId, current, sliceMasks: dict) -> None:
        """Write slices into the segment, never over voxels of a locked segment."""
        locked = segments.locked_mask(self.segmentationNode, self.volumeNode, (segmentId,))
        updated = np.array(current, bool, copy=True)
        target, guard = self.stack.frames(updated), self.stack.frames(locked)
        for frame, mask in sliceMasks.items():
            target[frame] = np.asarray(mask, bool) & ~guard[frame]
        segments.write_segment(self.segmentationNode, segmentId, self.volumeNode, updated)
