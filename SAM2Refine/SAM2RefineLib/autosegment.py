"""Auto-segment through the engine (child process or remote server alike): the prompt source
(a U-Net checkpoint or a label file) is uploaded, the pipeline runs as a cancellable server job,
and its answer comes into the scene: one segment per organ, the proposals' boxes as ROI nodes,
each earlier stage's masks in a segmentation node of its own, the final prompts as the Logic's
replay records. MRML only; `AutoSegmentSteps` is a mixin of the Logic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SAM2RefineLib import prompts, segments
from SAM2RefineLib.segments import ALGORITHM_ATTRIBUTE
from SAM2RefineLib.tasks import Task, follow
from SAM2RefineLib.undo import SegmentSnapshot, UndoEntry

STAGE_TITLES = {"unet": "proposals", "stage1": "stage 1", "stage2": "stage 2"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def label_names(source: Path, names=None) -> dict[int, str] | None:
    """{label: organ} for a label-file source: given, read from a names file (labels.json,
    dataset.json), or the names file next to the label file; None for a checkpoint or a
    .seg.nrrd (which names its own segments)."""
    from sam2refine import read_label_names, sidecar_names

    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if names is not None:
        return read_label_names(Path(names))
    if source.name.lower().endswith((*CHECKPOINT_SUFFIXES, ".seg.nrrd")):
        return None
    return sidecar_names(source)


class AutoSegmentSteps:
    """The Logic's Auto-segment step (mixed into `SAM2RefineLogicBase`, whose session,
    segments, prompt records and undo stack it uses)."""

    def autoSegmentTask(self, source, names=None, organs=None, stages: int = 2,
                        margin: int = 3, showStages: bool = True) -> Task:
        """Segment organs automatically: `source` (a U-Net checkpoint, or a label file whose
        labels `names` names: labels.json / dataset.json) proposes them and SAM 2 refines them
        in `stages` stages. One segment per organ (an unlocked segment of that name is
        replaced, a locked one left alone); the proposals' boxes become ROI nodes "<organ> box"
        and, with `showStages`, the earlier stages' masks get segmentation nodes of their own.
        One undo step."""
        self._checkIdle()
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"Auto-segment's prompt source {path} was not found: choose a U-Net "
                             "prompt generator checkpoint or a label file.")
        if self.axis != "axial":
            raise ValueError("Auto-segment works on axial slices: choose the axial axis.")
        labels = label_names(path, names)

        def body(task):
            from sam2refine import Upload, file_chunks

            with self._working(task):
                yield from self._sessionSteps(task)
                total = max(1, -(-path.stat().st_size // (1 << 20)))
                upload, sent = Upload(self.session.client, file_chunks(path)), 0
                while not upload.step():
                    sent += 1
                    task.report(min(sent, total) * 50 // total, 1000, "Sending the prompt source")
                    yield
                job = self.jobs.auto_segment(upload.upload_id, path.name, names=labels,
                                             organs=organs, stages=stages, margin=margin)
                try:
                    outcome = yield from follow(task, job, (0.05, 0.95), "Auto-segment",
                                                 large=True)
                except Exception:
                    self._dropStrayObjects()
                    raise
                self._checkInputs()
                return (yield from self._autoSegmented(task, outcome, showStages))
        return Task("Auto-segment", body, cancellable=True)

    def autoSegment(self, source, names=None, organs=None, stages: int = 2, margin: int = 3,
                    showStages: bool = True, progress=None, cancel=None) -> str:
        return self.autoSegmentTask(source, names, organs, stages, margin, showStages).run(
            progress, cancel)

    def _dropStrayObjects(self) -> None:
        """After a cancelled or failed run, remove the objects it left in the session."""
        import contextlib

        with contextlib.suppress(Exception):  # best effort: the engine may have stopped
            for info in self.session.describe():
                if info.obj_id not in self._sessionObjects:
                    self.session.remove_object(info.obj_id)

    def _autoSegmented(self, task, outcome, showStages: bool):
        """Steps writing the result into the scene, one organ per step."""
        yield
        entry, written, skipped = UndoEntry("Auto-segment"), {}, []
        final = self.stack.frames(outcome.final.labels)
        for name, organ in outcome.prompts.items():
            segmentId = segment_named(self.segmentationNode, name)
            if segmentId is not None and self.isSegmentLocked(segmentId):
                skipped.append(name)
                yield from follow(task, self.jobs.remove_object(organ.obj_id))
                continue
            if segmentId is None:
                segmentId = self.addSegment(name)
                entry.created_segment_ids.append(segmentId)
            current = self.segmentMask(segmentId)
            entry.snapshots.append(SegmentSnapshot.take(segmentId, current, self.stack))
            self._writeSlices(segmentId, current, dict(enumerate(final == organ.obj_id)))
            previous = self.objectIds.get(segmentId)
            if previous is not None and previous != organ.obj_id and (
                    previous in self._sessionObjects):
                yield from follow(task, self.jobs.remove_object(previous))
                self._sessionObjects.discard(previous)
            self.objectIds[segmentId] = organ.obj_id
            self._sessionObjects.add(organ.obj_id)
            for frame in [f for (s, f) in self._prompts if s == segmentId]:
                del self._prompts[(segmentId, frame)]  # the object was replaced
            for frame, record in prompt_records(self.volume, self.stack, organ,
                                                outcome.unet.labels):
                self._prompts.setdefault((segmentId, frame), []).append(record)
                entry.prompt_keys.append((segmentId, frame))
            written[name] = organ.obj_id
            task.report(950 + 40 * len(written) // max(1, len(outcome.prompts)), 1000,
                        "Writing the segments")
            yield
        entry.created_node_ids += show_boxes(
            self.scene, self.volumeNode, self.volume, self.stack,
            {n: b for n, b in outcome.unet.boxes.items() if n in written})
        for stage in outcome.stages[:-1] if showStages else []:
            node = show_stage(self.scene, self.volumeNode, stage, written,
                              STAGE_TITLES.get(stage.name, stage.name))
            entry.created_node_ids.append(node.GetID())
            yield
        self.undoStack.push(entry)
        if self.segmentationNode.GetAttribute(ALGORITHM_ATTRIBUTE) is None:  # nobody prompted
            self.segmentationNode.SetAttribute(ALGORITHM_ATTRIBUTE, "AUTOMATIC")
        self.saveParameters()
        locked = f"; left locked segment(s) alone: {', '.join(skipped)}" if skipped else ""
        return (f"Auto-segmented {len(written)} organ(s) from the {outcome.source} "
                f"({' / '.join(f'{s.name} {s.seconds:.0f} s' for s in outcome.stages)}){locked}.")


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
    for name, obj_id in organs.items():
        segment_id = segments.add_segment(node, name)
        segments.write_segment(node, segment_id, volume_node, stage.labels == obj_id)
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(0.0)
    display.SetVisibility3D(False)
    return node


def prompt_records(volume, stack, organ_prompts, proposal_labels: np.ndarray
                   ) -> list[tuple[int, tuple[str, tuple]]]:
    """(frame, replay record) for the prompts SAM 2 was finally given for one organ, in the
    Logic's record format (boxes in RAS, clicks on the slices), so that undoing a later prompt
    or restarting the engine sends them again."""
    def ras(frame, r, c):
        return [float(v) for v in volume.index_to_ras(stack.frc_to_ijk([frame, r, c]))]

    records = []
    frames = stack.frames(proposal_labels == organ_prompts.obj_id)
    for frame in organ_prompts.mask_frames:
        records.append((frame, ("mask", (frame, frames[frame].copy(), "refine"))))
    for frame, (r0, c0, r1, c1) in sorted(organ_prompts.boxes.items()):
        records.append((frame, ("box", (ras(frame, r0, c0), ras(frame, r1, c1), frame))))
    for frame, clicks in sorted(organ_prompts.points.items()):
        points = [[float(frame), float(r), float(c)] for r, c, _ in clicks]
        records.append((frame, ("points", (points, [int(v) for _, _, v in clicks]))))
    return records
