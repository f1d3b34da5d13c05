"""The module's Logic: a volume node, an engine session on it (in a child process on this
computer or on a remote server, through the same client), and a segmentation node with one
segment per session object. MRML only (no Qt).

Every AI step exists as `<step>Task(...)`, a `Task` the widget drives from a timer in short
steps (each one request the engine answers at once, or one segment's update), so Slicer's
main thread never waits on the engine; and as `<step>(...)`, which runs that task to the end
(Python console, tests). Validation errors are raised when a task is made, so the widget can
say them at once.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from SAM2RefineLib import promptnodes, segments
from SAM2RefineLib.autosegment import AutoSegmentSteps
from SAM2RefineLib.connection import EngineLink
from SAM2RefineLib.history import HistorySteps
from SAM2RefineLib.parameters import ParameterSteps
from SAM2RefineLib.promptsteps import PromptSteps
from SAM2RefineLib.propagation import PropagationSteps
from SAM2RefineLib.segments import ALGORITHM_ATTRIBUTE
from SAM2RefineLib.tasks import Task, follow
from SAM2RefineLib.undo import UndoStack
from SAM2RefineLib.volumes import ijk_to_ras, volume_from_node


class BusyError(RuntimeError):
    """Another step is running; this one would race with it."""


class InputsChangedError(RuntimeError):
    """The volume or segmentation changed (or went away) while a step worked on it."""


class SAM2RefineLogicBase(PromptSteps, PropagationSteps, HistorySteps, AutoSegmentSteps,
                          ParameterSteps):
    """Engine, session, prompts, segments and undo; `scene` defaults to `slicer.mrmlScene`."""

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self.link = EngineLink()
        self.session = None  # sam2refine.RemoteSession
        self.jobs = None  # sam2refine.SessionJobs of it
        self.volume = None  # the engine Volume of volumeNode
        self.stack = None  # its SliceStack along the session axis
        self.volumeNode = None
        self.segmentationNode = None
        self.axis, self.intensity = "axial", "ct"
        self.objectIds: dict[str, int] = {}  # segment ID -> object ID (kept with the scene)
        self.segmentRanges: dict[str, tuple[int, int]] = {}  # from 3D boxes
        self.undoStack = UndoStack()
        self.activeTask: Task | None = None
        self._sessionObjects: set[int] = set()  # object IDs that exist in the current session
        self._prompts: dict[tuple[str, int], list[tuple[str, tuple]]] = {}
        self._volumeState = None
        self._observations: list[tuple[object, int]] = []
        self.log = logging.getLogger("SAM2Refine").info

    @property
    def scene(self):
        if self._scene is None:
            import slicer

            return slicer.mrmlScene
        return self._scene

    # ----- the engine --------------------------------------------------------------------------
    def configureLocal(self, model: str = "sam2.1_hiera_tiny", imageSize: int = 512,
                       checkpoint: str | None = None, device: str = "auto",
                       adapters: str | None = None, python: str | None = None) -> None:
        """Segment on this computer: a child engine process serves this model (started on
        the first step; `python` defaults to the engine's own environment)."""
        from sam2refine import EngineSettings

        settings = EngineSettings(model, int(imageSize), checkpoint or None, adapters or None,
                                  device)
        self._checkIdle()
        if self.link.configureLocal(settings, python):
            self._closeRemoteState()
        self.saveParameters()

    def configureRemote(self, url: str, token: str | None = None) -> None:
        """Segment on the engine server at `url` (`sam2refine serve` there)."""
        self._checkIdle()
        if self.link.configureRemote(url, token):
            self._closeRemoteState()
        self.saveParameters()

    def useEngine(self, engine) -> None:
        """Use a running `sam2refine.LocalEngine` (tests, benchmarks)."""
        self._checkIdle()
        self.link.useEngine(engine)
        self._closeRemoteState()

    def shutdown(self) -> None:
        """Close the session and stop the child engine (module closed, Slicer exits)."""
        if self.activeTask is not None:
            self.activeTask.close()
            self.activeTask = None
        self.closeSession()
        self._forgetObservations()
        self.link.shutdown()

    # ----- inputs and session ----------------------------------------------------------------
    def setInputs(self, volumeNode, segmentationNode=None, axis: str = "axial",
                  intensity: str = "ct") -> None:
        """What the next steps work on; a change closes the session (segments are kept).
        Without `segmentationNode` the one made for this volume is kept, or one is made."""
        self._checkIdle()
        if segmentationNode is None and volumeNode is self.volumeNode:
            segmentationNode = self.segmentationNode
        if segmentationNode is not None and volumeNode is not None:
            self._checkSameFrame(volumeNode, segmentationNode)
        if (volumeNode is self.volumeNode and segmentationNode is self.segmentationNode
                and (axis, intensity) == (self.axis, self.intensity)):
            return
        if volumeNode is not self.volumeNode or segmentationNode is not self.segmentationNode:
            self.objectIds.clear()
            self.segmentRanges.clear()
        self.closeSession()
        self.volumeNode, self.segmentationNode = volumeNode, segmentationNode
        self.axis, self.intensity = axis, intensity
        self._observeSegmentation()
        self.saveParameters()

    def startSessionTask(self, volumeNode=None, segmentationNode=None, axis: str | None = None,
                         intensity: str | None = None, serverUrl: str | None = None,
                         token: str | None = None) -> Task:
        """Open a session (uploading the volume) so that the first prompt answers at once."""
        if serverUrl:
            self.configureRemote(serverUrl, token)
        if volumeNode is not None:
            self.setInputs(volumeNode, segmentationNode, axis or self.axis,
                           intensity or self.intensity)
        self._checkIdle()

        def body(task):
            with self._working(task):
                return (yield from self._sessionSteps(task))
        return Task("Starting the session", body, cancellable=True)

    def startSession(self, volumeNode=None, segmentationNode=None, **kwargs):
        return self.startSessionTask(volumeNode, segmentationNode, **kwargs).run()

    def closeSession(self) -> None:
        """Free the engine's session; prompts and undo steps go with it, segments stay."""
        self._closeRemoteState()
        self._prompts.clear()
        self.undoStack.clear()

    def _closeRemoteState(self) -> None:
        session, self.session, self.jobs = self.session, None, None
        self._sessionObjects.clear()
        if session is not None:
            with contextlib.suppress(Exception):  # an engine that stopped has nothing to free
                session.close()

    def _lostSession(self) -> None:
        """The engine died: its session is gone, but the prompts are kept, so the next step
        re-sends them to a new session."""
        self.session, self.jobs = None, None
        self._sessionObjects.clear()

    def _sessionSteps(self, task):
        """Steps that end with an open session on the inputs (engine started if needed)."""
        from sam2refine import Upload, open_session_job, volume_chunks

        if self.session is not None:
            if self._volumeSignature() == self._volumeState:
                return self.session
            self.log("The input volume changed: starting a new session on it.")
            self.closeSession()
        if self.volumeNode is None:
            raise ValueError("Choose the input volume first.")
        client = yield from self.link.connect(task)
        volume = volume_from_node(self.volumeNode)
        signature = self._volumeSignature()
        pieces = max(1, -(-volume.voxels.nbytes // (4 << 20)))
        upload = Upload(client, volume_chunks(volume))
        sent = 0
        while not upload.step():
            sent += 1
            task.report(min(sent, pieces) * 500 // pieces, 1000, "Sending the volume")
            if task.cancelRequested:
                upload.discard()
                from sam2refine import CancelledError

                raise CancelledError("Starting the session was cancelled.")
            yield
        job = open_session_job(client, upload.upload_id, volume, self.axis, self.intensity)
        session = yield from follow(task, job, (0.5, 1.0), "Opening the session")
        if self._volumeSignature() != signature:
            session.close()
            raise InputsChangedError("The input volume changed while it was being sent; "
                                     "try again.")
        from sam2refine import SessionJobs

        self.session, self.jobs = session, SessionJobs(session)
        self.volume, self.stack, self._volumeState = volume, session.stack, signature
        self._sessionObjects.clear()
        self._segmentation().SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        return session

    def _segmentation(self):
        """The segmentation node of the inputs (made for the volume when there is none)."""
        if self.segmentationNode is None or self.scene.GetNodeByID(
                self.segmentationNode.GetID() or "") is None:
            if self.volumeNode is None:
                raise ValueError("Choose the input volume first.")
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                f"{self.volumeNode.GetName()} SAM2Refine")
            node.CreateDefaultDisplayNodes()
            node.SetAndObserveTransformNodeID(self.volumeNode.GetTransformNodeID())
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
            self.segmentationNode = node
            self._observeSegmentation()
            self.saveParameters()
        return self.segmentationNode

    def _volumeSignature(self):
        node = self.volumeNode
        image = node.GetImageData() if node is not None else None
        if image is None or self.scene.GetNodeByID(node.GetID() or "") is None:
            return None
        return (tuple(image.GetDimensions()), tuple(ijk_to_ras(node).ravel()),
                node.GetTransformNodeID(), image.GetAddressAsString("vtkImageData"))

    def _checkInputs(self) -> None:
        """Refuse to write a result onto inputs that changed while the engine worked."""
        if self._volumeState is not None and self._volumeSignature() != self._volumeState:
            self.closeSession()
            raise InputsChangedError(
                "The input volume was changed or removed while SAM2Refine worked on it, so the "
                "result was not applied (the segments are as they were). Start again.")
        node = self.segmentationNode
        if node is None or self.scene.GetNodeByID(node.GetID() or "") is None:
            self.closeSession()
            raise InputsChangedError("The segmentation was removed while SAM2Refine worked on "
                                     "it; the result was not applied.")

    @contextlib.contextmanager
    def _working(self, task):
        """One step at a time; an engine that died meanwhile is reported in one line."""
        from sam2refine import EngineStoppedError

        if self.activeTask is not None and self.activeTask is not task:
            raise BusyError(f"SAM2Refine is busy with '{self.activeTask.title}': wait for it "
                            "or press Cancel.")
        self.activeTask = task
        try:
            yield
        except Exception as exc:
            better = self.link.explain(exc)
            if isinstance(better, EngineStoppedError):
                self._lostSession()
            if better is not exc:
                raise better from None
            raise
        finally:
            self.activeTask = None

    def _checkIdle(self) -> None:
        if self.activeTask is not None:
            raise BusyError(f"SAM2Refine is busy with '{self.activeTask.title}': wait for it "
                            "or press Cancel.")

    @staticmethod
    def _checkSameFrame(volumeNode, segmentationNode) -> None:
        if volumeNode.GetTransformNodeID() != segmentationNode.GetTransformNodeID():
            raise ValueError(
                f"'{segmentationNode.GetName()}' and '{volumeNode.GetName()}' are under different "
                "transforms; put them under the same transform (or none) first.")

    # ----- segments and objects ----------------------------------------------------------------
    def addSegment(self, name: str, color=None) -> str:
        """A new empty segment (colour and terminology from its name)."""
        return segments.add_segment(self._segmentation(), name, color)

    def segmentMask(self, segmentId: str) -> np.ndarray:
        """A segment's voxels on the input volume's grid, [k, j, i] bool."""
        return segments.read_segment(self.segmentationNode, segmentId, self.volumeNode)

    def isSegmentLocked(self, segmentId: str) -> bool:
        return segments.is_locked(self.segmentationNode, segmentId)

    def setSegmentLocked(self, segmentId: str, locked: bool = True) -> None:
        """Locked segments are never changed by AI steps nor propagated."""
        segments.set_locked(self.segmentationNode, segmentId, locked)

    def _checkEditable(self, segmentId: str) -> None:
        node = self.segmentationNode
        segment = node.GetSegmentation().GetSegment(segmentId) if node is not None else None
        if segment is None:
            raise ValueError(f"There is no segment '{segmentId}'; select or add a segment.")
        if self.isSegmentLocked(segmentId):
            raise ValueError(f"Segment '{segment.GetName()}' is locked; unlock it to change it.")

    def _objectSteps(self, task, segmentId: str):
        """Steps that end with the segment's object in the session: made on first use (with
        the ID it had, so labels stay the same), its recorded prompts sent again after the
        engine was restarted or the scene reloaded."""
        objId = self.objectIds.get(segmentId)
        if objId is not None and objId in self._sessionObjects:
            return objId
        if objId is None:
            objId = max([*self.objectIds.values(), *self._sessionObjects], default=0) + 1
        objId = yield from follow(task, self.jobs.add_object(segmentId, objId))
        self._sessionObjects.add(objId)
        self.objectIds[segmentId] = objId
        for (owner, _frame), records in sorted(self._prompts.items()):
            for kind, args in records if owner == segmentId else ():
                yield from follow(task, self._replayJob(objId, kind, args),
                                  status="Sending the segment's prompts again")
        self.saveParameters()
        return objId

    def _replayJob(self, objId: int, kind: str, args: tuple):
        if kind == "points":
            return self.jobs.add_points(objId, args[0], args[1], coords="slice")
        if kind == "box":
            return self.jobs.set_box(objId, args[0], args[1], coords="ras", frame=args[2])
        return self.jobs.set_mask(objId, args[0], args[1], args[2])

    def _segmentName(self, segmentId: str) -> str:
        return self.segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()

    def _segmentExists(self, segmentId: str) -> bool:
        return self.segmentationNode.GetSegmentation().GetSegment(segmentId) is not None

    # ----- scene observations ------------------------------------------------------------------
    def _observeSegmentation(self) -> None:
        """Prompt nodes follow their segments (colour, name, visibility, removal)."""
        self._forgetObservations()
        node = self.segmentationNode
        if node is None:
            return
        for event in (node.DisplayModifiedEvent, node.GetSegmentation().SegmentModified,
                      node.GetSegmentation().SegmentRemoved):
            self._observations.append((node, node.AddObserver(event, self._onSegmentsChanged)))
        self.syncPromptNodes()

    def _forgetObservations(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()

    def _onSegmentsChanged(self, caller=None, event=None) -> None:
        node = self.segmentationNode
        if node is None or self.scene.GetNodeByID(node.GetID() or "") is not node:
            return  # its scene was closed
        for segmentId in [s for s in self.objectIds if not self._segmentExists(s)]:
            self.objectIds.pop(segmentId)
            self.segmentRanges.pop(segmentId, None)
        self.syncPromptNodes()

    def syncPromptNodes(self) -> None:
        """Show each segment's prompts only while it is shown, in its colour."""
        if self.segmentationNode is not None:
            promptnodes.sync(self.scene, self.segmentationNode)

    # ----- export ------------------------------------------------------------------------------
    def algorithmType(self) -> str:
        """DICOM-SEG algorithm type of the segmentation: AUTOMATIC while only Auto-segment
        made it, SEMIAUTOMATIC once a person prompted (the default)."""
        node = self.segmentationNode
        value = node.GetAttribute(ALGORITHM_ATTRIBUTE) if node is not None else None
        return value or "SEMIAUTOMATIC"

    def exportSegNrrd(self, path: str | Path) -> Path:
        """Save the segmentation node (all segments, names, colours, terminology) as
        .seg.nrrd on the input volume's grid, with Slicer's own writer, atomically."""
        if self.segmentationNode is None:
            raise RuntimeError("There is no segmentation to export yet.")
        return segments.write_seg_nrrd(self.segmentationNode, Path(path))
