"""Undo: the last AI step is taken back in the scene (its segments get their exact previous
content, its prompt markups and boxes go, a 3D box's range is forgotten) and in the engine
(its prompts are withdrawn, earlier prompts on those slices sent again). A mixin of the Logic.
"""

from __future__ import annotations

from SAM2RefineLib import segments
from SAM2RefineLib.tasks import Task, follow


class HistorySteps:
    """The Logic's Undo step."""

    def canUndo(self) -> bool:
        return len(self.undoStack) > 0

    def undoTask(self) -> Task:
        """Take back the last AI step (see the module docstring). The scene is restored first;
        if the engine is not running, only its prompt records change, so a new session gets
        the right prompts."""
        self._checkIdle()
        entry = self.undoStack.peek()
        if entry is None:
            raise ValueError("Nothing to undo.")
        locked = [s for s in entry.segment_ids
                  if self._segmentExists(s) and self.isSegmentLocked(s)]
        if locked:
            names = ", ".join(self._segmentName(s) for s in locked)
            raise ValueError(f"Unlock {names} to undo '{entry.label}'.")

        def body(task):
            with self._working(task):
                self.undoStack.pop()
                replays = []
                for key in entry.prompt_keys:
                    records = self._prompts.get(key, [])
                    if records:
                        records.pop()
                    replays.append((key[0], key[1], list(records)))
                created = {s: self.objectIds.pop(s, None) for s in entry.created_segment_ids}
                self._restoreScene(entry)
                live = self.session is not None
                for segmentId, frame, records in replays if live else ():
                    objId = self.objectIds.get(segmentId)
                    if objId not in self._sessionObjects:
                        continue
                    yield from follow(task, self.jobs.clear_prompts(objId, frame))
                    for kind, args in records:
                        yield from follow(task, self._replayJob(objId, kind, args))
                for objId in created.values():
                    if live and objId in self._sessionObjects:
                        yield from follow(task, self.jobs.remove_object(objId))
                        self._sessionObjects.discard(objId)
                self.saveParameters()
                return entry.label
        return Task(f"Undo {entry.label}", body)

    def undo(self) -> str:
        return self.undoTask().run()

    def _restoreScene(self, entry) -> None:
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
        for segmentId, previous in entry.previous_ranges.items():
            if previous is None:
                self.segmentRanges.pop(segmentId, None)
            else:
                self.segmentRanges[segmentId] = previous
        for segmentId in entry.created_segment_ids:  # segments the step itself added
            for key in [k for k in self._prompts if k[0] == segmentId]:
                del self._prompts[key]
            if self._segmentExists(segmentId):
                self.segmentationNode.GetSegmentation().RemoveSegment(segmentId)
