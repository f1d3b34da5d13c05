"""Propagation: SAM 2 tracks the prompted segments through the slices, as cancellable server
jobs; the result is written per segment, only on slices the propagation may fill. A segment
prompted with a 3D box is limited to the box's slices (the first/last-slice prompt). A mixin
of the Logic (its session, segments and undo stack)."""

from __future__ import annotations

from SAM2RefineLib.tasks import Task, follow
from SAM2RefineLib.undo import SegmentSnapshot, UndoEntry


class PropagationSteps:
    """The Logic's Propagate step."""

    def segmentRange(self, segmentId: str, frameRange=None) -> tuple[int, int] | None:
        """The slices (inclusive) a propagation of the segment may fill: `frameRange` (all
        slices by default) within the range its 3D box set; None when they do not overlap."""
        last = (self.stack.num_frames if self.stack is not None else 1 << 30) - 1
        low, high = (0, last) if frameRange is None else (int(frameRange[0]),
                                                          int(frameRange[1]))
        low, high = min(low, high), max(low, high)
        if segmentId in self.segmentRanges:
            first, final = self.segmentRanges[segmentId]
            low, high = max(low, first), min(high, final)
        return (low, high) if low <= high else None

    def propagateTask(self, segmentIds=None, frameRange=None) -> Task:
        """Propagate the prompted, unlocked segments (all by default) over `frameRange`
        (inclusive slice numbers; all slices by default). Cancelling keeps finished slices."""
        self._checkIdle()
        prompted = set(self.objectIds) | {s for s, _ in self._prompts}
        ids = sorted(prompted) if segmentIds is None else list(segmentIds)
        node = self.segmentationNode
        ids = [s for s in ids if s in prompted and node is not None and self._segmentExists(s)
               and not self.isSegmentLocked(s)]
        if not ids:
            raise ValueError("Nothing to propagate: prompt an unlocked segment first.")

        def body(task):
            from sam2refine import CancelledError

            with self._working(task):
                yield from self._sessionSteps(task)
                objIds = {}
                for segmentId in ids:
                    objIds[segmentId] = yield from self._objectSteps(task, segmentId)
                ranges = {s: self.segmentRange(s, frameRange) for s in ids}
                groups: dict[tuple[int, int], list[str]] = {}
                for segmentId, limits in ranges.items():
                    if limits is not None:
                        groups.setdefault(limits, []).append(segmentId)
                stopped = None
                for n, (limits, members) in enumerate(sorted(groups.items())):
                    job = self.jobs.propagate([objIds[s] for s in members], limits)
                    span = (0.9 * n / len(groups), 0.9 * (n + 1) / len(groups))
                    try:
                        yield from follow(task, job, span, "Propagating")
                    except CancelledError as exc:
                        stopped = str(exc)
                        break
                entry = UndoEntry("Propagate")
                written = [s for members in groups.values() for s in members]
                for segmentId in written:
                    info = yield from follow(task, self.jobs.object(objIds[segmentId]),
                                             status="Writing the segments")
                    mask = yield from follow(task, self.jobs.object_mask(objIds[segmentId]),
                                             large=True)
                    self._checkInputs()
                    low, high = ranges[segmentId]
                    frames = sorted(f for f in {*info.prompted_frames, *info.tracked_frames}
                                    if low <= f <= high)
                    current = self.segmentMask(segmentId)
                    entry.snapshots.append(SegmentSnapshot.take(segmentId, current, self.stack))
                    sliced = self.stack.frames(mask)
                    self._writeSlices(segmentId, current, {f: sliced[f] for f in frames})
                    yield
                self.undoStack.push(entry)
                return stopped or f"Propagated {len(written)} segment(s)."
        return Task("Propagate", body, cancellable=True)

    def propagate(self, segmentIds=None, frameRange=None, progress=None, cancel=None) -> str:
        return self.propagateTask(segmentIds, frameRange).run(progress, cancel)
