"""The module's Logic: a volume node, a SAM 2 session (in-process or remote), and a
segmentation node with one segment per session object. MRML only (no Qt).

Every AI step exists as `<step>Job(...)` (a `Job`: engine work in `run`, MRML updates in
`finish`, so a widget can run it off the UI thread) and as `<step>(...)`, which runs it at once
(Python console, tests). Steps only use the session verbs shared by `sam2refine.SessionLike`
and the remote client, so both backends behave the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from SAM2RefineLib import backends, prompts, segments
from SAM2RefineLib.autosegment import AutoSegmentSteps
from SAM2RefineLib.segments import ALGORITHM_ATTRIBUTE
from SAM2RefineLib.tasks import Job
from SAM2RefineLib.undo import SegmentSnapshot, UndoEntry, UndoStack
from SAM2RefineLib.volumes import volume_from_node

POSITIVE_POINTS_NAME = "SAM2Refine include"
NEGATIVE_POINTS_NAME = "SAM2Refine exclude"


class SAM2RefineLogicBase(AutoSegmentSteps):
    """Session, prompts, segments and undo; `scene` defaults to `slicer.mrmlScene`."""

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self.model = None
        self.session = None
        self.volume = None  # the engine Volume of volumeNode
        self.stack = None  # its SliceStack along the session axis
        self.volumeNode = None
        self.segmentationNode = None
        self.objectIds: dict[str, int] = {}  # segment ID -> session object ID
        self.undoStack = UndoStack()
        self._prompts: dict[tuple[str, int], list[tuple[str, tuple]]] = {}
        self.log = logging.getLogger("SAM2Refine").info

    @property
    def scene(self):
        if self._scene is None:
            import slicer

            return slicer.mrmlScene
        return self._scene

    # ----- model and session ---------------------------------------------------------------
    def setModel(self, model) -> None:
        """Use an already built SAM 2 model (from `sam2refine.load_model`)."""
        self.model = model

    def loadModelJob(self, name: str = "sam2.1_hiera_tiny", imageSize: int = 512,
                     checkpoint: str | None = None, device: str = "auto",
                     adapters: str | None = None) -> Job:
        """Build the model, downloading the official weights into the cache if needed; with
        `adapters`, fine-tuned adapters (.safetensors) for that checkpoint go on top."""
        def run(progress, cancel):
            return backends.load_model(name, imageSize, checkpoint, device, progress, cancel,
                                       adapters=adapters)
        return Job(f"Loading {name}", run, self._modelLoaded)

    def _modelLoaded(self, model):
        self.model = model
        return model

    def startSessionJob(self, volumeNode, segmentationNode=None, axis: str = "axial",
                        intensity: str = "ct", serverUrl: str | None = None,
                        token: str | None = None) -> Job:
        """Open a session on `volumeNode` (in-process, or on `serverUrl`) for `segmentationNode`
        (created when None)."""
        volume = volume_from_node(volumeNode)
        if segmentationNode is not None:
            self._checkSameFrame(volumeNode, segmentationNode)
        model = self.model

        def run(progress, cancel):
            return backends.open_session(volume, model=model, server_url=serverUrl, token=token,
                                         axis=axis, intensity=intensity)

        def finish(session):
            self.closeSession()
            self.session, self.volume, self.volumeNode = session, volume, volumeNode
            from sam2refine import slice_stack

            self.stack = slice_stack(volume, axis)
            self.segmentationNode = segmentationNode or self._newSegmentation(volumeNode)
            self.segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            return session
        return Job("Starting the session", run, finish)

    def startSession(self, volumeNode, segmentationNode=None, **kwargs):
        return self.startSessionJob(volumeNode, segmentationNode, **kwargs)()

    def closeSession(self) -> None:
        if self.session is not None:
            backends.close_session(self.session)
        self.session = None
        self.objectIds.clear()
        self._prompts.clear()
        self.undoStack.clear()

    def _newSegmentation(self, volumeNode):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                            f"{volumeNode.GetName()} SAM2Refine")
        node.CreateDefaultDisplayNodes()
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        return node

    @staticmethod
    def _checkSameFrame(volumeNode, segmentationNode) -> None:
        if volumeNode.GetTransformNodeID() != segmentationNode.GetTransformNodeID():
            raise ValueError(
                f"'{segmentationNode.GetName()}' and '{volumeNode.GetName()}' are under different "
                "transforms; put them under the same transform (or none) first.")

    def _requireSession(self) -> None:
        if self.session is None:
            raise RuntimeError("Start a session first: choose the input volume, then a prompt.")

    # ----- segments ------------------------------------------------------------------------
    def addSegment(self, name: str, color=None) -> str:
        """A new empty segment (colour and terminology from its name)."""
        self._requireSession()
        return segments.add_segment(self.segmentationNode, name, color)

    def segmentMask(self, segmentId: str) -> np.ndarray:
        """A segment's voxels on the input volume's grid, [k, j, i] bool."""
        return segments.read_segment(self.segmentationNode, segmentId, self.volumeNode)

    def isSegmentLocked(self, segmentId: str) -> bool:
        return segments.is_locked(self.segmentationNode, segmentId)

    def setSegmentLocked(self, segmentId: str, locked: bool = True) -> None:
        """Locked segments are never changed by AI steps nor re-propagated."""
        segments.set_locked(self.segmentationNode, segmentId, locked)
        if self.session is not None and segmentId in self.objectIds:
            self.session.set_locked(self.objectIds[segmentId], locked)

    def _objectFor(self, segmentId: str) -> int:
        """The session object of a segment (created on first use); refuses locked segments."""
        self._requireSession()
        name = self.segmentationNode.GetSegmentation().GetSegment(segmentId)
        if name is None:
            raise ValueError(f"There is no segment '{segmentId}'; select or add a segment.")
        if self.isSegmentLocked(segmentId):
            raise ValueError(f"Segment '{name.GetName()}' is locked; unlock it to change it.")
        if segmentId not in self.objectIds:
            objId = max(self.objectIds.values(), default=0) + 1
            self.objectIds[segmentId] = self.session.add_object(segmentId, objId)
        return self.objectIds[segmentId]

    def _segmentName(self, segmentId: str) -> str:
        return self.segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()

    # ----- prompts -------------------------------------------------------------------------
    def pointNodes(self):
        """The fiducial nodes the "+ point" and "- point" tools place into (created once)."""
        nodes = []
        for name, color in ((POSITIVE_POINTS_NAME, (0.1, 0.8, 0.1)),
                            (NEGATIVE_POINTS_NAME, (0.9, 0.1, 0.1))):
            node = self.scene.GetFirstNodeByName(name)
            if node is None:
                node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(*color)
            nodes.append(node)
        return tuple(nodes)

    def addPointsJob(self, segmentId: str, positiveNode=None, negativeNode=None) -> Job:
        """Send the control points not sent yet (positive / negative nodes) as clicks; one
        prompt per slice they fall on."""
        objId = self._objectFor(segmentId)
        groups = prompts.group_points(self.volumeNode, self.volume, self.stack,
                                      positiveNode, negativeNode)
        if not groups:
            raise ValueError("Place a point on the image first.")

        def run(progress, cancel):
            return self.session.add_points(objId, [p for g in groups for p in g.points_frc],
                                           [v for g in groups for v in g.labels], coords="slice")

        def finish(results):
            records = [("points", (g.points_frc, g.labels)) for g in groups]
            entry = self._applySlices(segmentId, results, records, "Points")
            entry.sent_points = [p for g in groups for p in g.point_ids]
            for nodeId in {n for n, _ in entry.sent_points}:
                node = self.scene.GetNodeByID(nodeId)
                prompts.mark_sent(node, [p for n, p in entry.sent_points if n == nodeId])
            return results
        return Job("Point prompt", run, finish)

    def addPoints(self, segmentId: str, positiveNode=None, negativeNode=None):
        return self.addPointsJob(segmentId, positiveNode, negativeNode)()

    def setBoxJob(self, segmentId: str, roiNode, frame: int | None = None) -> Job:
        """Box prompt from an ROI node, on `frame` or on the slice through its centre."""
        objId = self._objectFor(segmentId)
        cornerA, cornerB, frame = prompts.roi_box(self.volumeNode, self.volume, self.stack,
                                                  roiNode, frame)

        def run(progress, cancel):
            return [self.session.set_box(objId, cornerA, cornerB, coords="ras", frame=frame)]

        def finish(results):
            self._applySlices(segmentId, results, [("box", (cornerA, cornerB, frame))], "Box")
            return results[0]
        return Job("Box prompt", run, finish)

    def setBox(self, segmentId: str, roiNode, frame: int | None = None):
        return self.setBoxJob(segmentId, roiNode, frame)()

    def setMaskFromSegmentJob(self, segmentId: str, sourceSegmentId: str | None = None,
                              frames=None, mode: str = "refine", showBoxes: bool = True) -> Job:
        """Mask prompt from a segment's voxels (the segment itself by default), on `frames` or
        on the slice where it is largest. In refine mode the box SAM 2 is given is shown as
        an ROI node."""
        objId = self._objectFor(segmentId)
        source = self.segmentMask(sourceSegmentId or segmentId)
        frames = None if frames is None else [int(f) for f in frames]

        def run(progress, cancel):
            return self.session.set_mask_volume(objId, source, frames=frames, mode=mode)

        def finish(results):
            sliced = self.stack.frames(source)
            records = [("mask", (r.frame, sliced[r.frame].copy(), mode)) for r in results]
            entry = self._applySlices(segmentId, results, records, "Mask")
            if showBoxes and mode == "refine":
                for r in results:
                    box = prompts.box_of_mask(sliced[r.frame])
                    name = f"SAM2Refine box {self._segmentName(segmentId)} slice {r.frame}"
                    roi = prompts.box_to_roi(self.scene, self.volumeNode, self.volume,
                                             self.stack, r.frame, box, name)
                    roi.SetLocked(True)
                    entry.created_node_ids.append(roi.GetID())
            return results
        return Job("Mask prompt", run, finish)

    def setMaskFromSegment(self, segmentId: str, sourceSegmentId: str | None = None,
                           frames=None, mode: str = "refine", showBoxes: bool = True):
        return self.setMaskFromSegmentJob(segmentId, sourceSegmentId, frames, mode, showBoxes)()

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

    # ----- propagation ---------------------------------------------------------------------
    def propagateJob(self, segmentIds=None, frameRange=None) -> Job:
        """Propagate the prompted, unlocked segments (all by default) over `frameRange`
        (inclusive slice numbers; all slices by default). Cancelling keeps finished slices."""
        self._requireSession()
        ids = list(self.objectIds) if segmentIds is None else list(segmentIds)
        ids = [s for s in ids if s in self.objectIds and not self.isSegmentLocked(s)]
        if not ids:
            raise ValueError("Nothing to propagate: prompt an unlocked segment first.")
        objIds = [self.objectIds[s] for s in ids]

        def run(progress, cancel):
            from sam2refine import CancelledError

            stopped = None
            try:
                self.session.propagate(objects=objIds, frame_range=frameRange, progress=progress,
                                       cancel=cancel)
            except CancelledError as exc:
                stopped = str(exc)
            info = {o.obj_id: o for o in self.session.describe()}
            masks = {}
            for segmentId, objId in zip(ids, objIds):
                frames = set(info[objId].prompted_frames) | set(info[objId].tracked_frames)
                masks[segmentId] = (self.session.object_mask(objId), sorted(frames))
            return masks, stopped

        def finish(output):
            masks, stopped = output
            entry = UndoEntry("Propagate")
            for segmentId, (mask, frames) in masks.items():
                current = self.segmentMask(segmentId)
                entry.snapshots.append(SegmentSnapshot.take(segmentId, current, self.stack))
                sliced = self.stack.frames(mask)
                self._writeSlices(segmentId, current, {f: sliced[f] for f in frames})
            self.undoStack.push(entry)
            return stopped or f"Propagated {len(masks)} segment(s)."
        return Job("Propagate", run, finish)

    def propagate(self, segmentIds=None, frameRange=None, progress=None, cancel=None) -> str:
        return self.propagateJob(segmentIds, frameRange)(progress, cancel)

    def algorithmType(self) -> str:
        """DICOM-SEG algorithm type of the segmentation: AUTOMATIC while only Auto-segment
        made it, SEMIAUTOMATIC once a person prompted (the default)."""
        node = self.segmentationNode
        value = node.GetAttribute(ALGORITHM_ATTRIBUTE) if node is not None else None
        return value or "SEMIAUTOMATIC"

    # ----- undo ----------------------------------------------------------------------------
    def canUndo(self) -> bool:
        return len(self.undoStack) > 0

    def undoJob(self) -> Job:
        """Take back the last AI step: its segments get their exact previous content, and its
        prompts are withdrawn from the session (earlier prompts on those slices are re-sent)."""
        entry = self.undoStack.peek()
        if entry is None:
            raise ValueError("Nothing to undo.")
        locked = [s for s in entry.segment_ids
                  if self._segmentExists(s) and self.isSegmentLocked(s)]
        if locked:
            names = ", ".join(self._segmentName(s) for s in locked)
            raise ValueError(f"Unlock {names} to undo '{entry.label}'.")
        self.undoStack.pop()
        replays = []
        for key in entry.prompt_keys:
            records = self._prompts.get(key, [])
            if records:
                records.pop()
            replays.append((self.objectIds.get(key[0]), key[1], list(records)))
        createdObjects = [self.objectIds[s] for s in entry.created_segment_ids
                          if s in self.objectIds]

        def run(progress, cancel):
            for objId, frame, records in replays:
                if objId is None:
                    continue
                self.session.clear_prompts(objId, frame)
                for kind, args in records:
                    self._replay(objId, kind, args)
            for objId in createdObjects:
                self.session.remove_object(objId)

        def finish(_):
            for snapshot in reversed(entry.snapshots):
                if self._segmentExists(snapshot.segment_id):
                    current = self.segmentMask(snapshot.segment_id)
                    segments.write_segment(self.segmentationNode, snapshot.segment_id,
                                           self.volumeNode, snapshot.restore(current, self.stack))
            for nodeId, pointId in entry.sent_points:
                node = self.scene.GetNodeByID(nodeId)
                index = node.GetNthControlPointIndexByID(pointId) if node else -1
                if index >= 0:
                    node.RemoveNthControlPoint(index)
            for nodeId in entry.created_node_ids:
                node = self.scene.GetNodeByID(nodeId)
                if node is not None:
                    self.scene.RemoveNode(node)
            for segmentId in entry.created_segment_ids:  # segments the step itself added
                self.objectIds.pop(segmentId, None)
                for key in [k for k in self._prompts if k[0] == segmentId]:
                    del self._prompts[key]
                if self._segmentExists(segmentId):
                    self.segmentationNode.GetSegmentation().RemoveSegment(segmentId)
            return entry.label
        return Job(f"Undo {entry.label}", run, finish)

    def undo(self) -> str:
        return self.undoJob()()

    def _replay(self, objId: int, kind: str, args: tuple) -> None:
        if kind == "points":
            self.session.add_points(objId, args[0], args[1], coords="slice")
        elif kind == "box":
            self.session.set_box(objId, args[0], args[1], coords="ras", frame=args[2])
        elif kind == "mask":
            self.session.set_mask(objId, args[0], args[1], args[2])

    def _segmentExists(self, segmentId: str) -> bool:
        return self.segmentationNode.GetSegmentation().GetSegment(segmentId) is not None

    # ----- export --------------------------------------------------------------------------
    def exportSegNrrd(self, path: str | Path) -> Path:
        """Save the segmentation node (all segments, names, colours, terminology) as
        .seg.nrrd on the input volume's grid, with Slicer's own writer, atomically."""
        if self.segmentationNode is None:
            raise RuntimeError("There is no segmentation to export yet.")
        return segments.write_seg_nrrd(self.segmentationNode, Path(path))
