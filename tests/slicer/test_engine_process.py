"""The engine in its own process, as the Logic lives with it on Slicer's real core: a child
killed mid-propagation is one clear line and the next action works on a new one (with the
earlier prompts sent again); inputs cannot change under a running step, and a change made
behind the Logic's back is refused, never written misplaced; the parameter node brings a
session's settings and segment -> object map back with the scene."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest

from tests.slicer.conftest import engine_settings, open_logic
from tests.slicer.test_logic import LIVER_POINT, place_point


@pytest.fixture(scope="module")
def ct_path(totalseg_dir):
    return totalseg_dir / "example_ct_sm.nii.gz"


def step_until(task, condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not task.step():
        if condition():
            return
        assert time.monotonic() < deadline, "the task never got there"
        time.sleep(0.03)
    raise AssertionError(f"'{task.title}' ended first: {task.error!r}")


def test_a_killed_engine_is_one_line_and_the_next_action_works(core, module, tiny_checkpoint,
                                                               ct_path):
    from sam2refine import EngineStoppedError

    node = core.load_volume(ct_path)
    logic = module.SAM2RefineLogic(core.scene)
    s = engine_settings(tiny_checkpoint)
    logic.configureLocal(s.model, s.image_size, s.checkpoint, s.device, python=sys.executable)
    try:
        logic.startSession(node)
        liver = logic.addSegment("liver")
        include = logic.pointNodes(liver)[0]
        place_point(node, include, LIVER_POINT)
        logic.addPoints(liver)
        before = logic.segmentMask(liver)
        task = logic.propagateTask(frameRange=(5, 29))
        step_until(task, lambda: task.progress[0] > 0)  # the server is propagating
        child = logic.link.engine.process.pid
        os.kill(child, signal.SIGKILL)
        while not task.step():
            time.sleep(0.03)
        assert isinstance(task.error, EngineStoppedError)
        message = str(task.error)
        assert "\n" not in message and "was killed" in message
        assert "next action starts a new one" in message
        np.testing.assert_array_equal(logic.segmentMask(liver), before)  # nothing half-written
        assert logic.session is None and logic.activeTask is None
        # The next action: a second click. A new engine starts, the first click is sent again.
        place_point(node, include, (70, 60, 20))
        results = logic.addPoints(liver)
        assert logic.link.engine.process.pid != child and [r.frame for r in results] == [20]
        info = logic.session.object(logic.objectIds[liver])
        assert info.prompted_frames == [20, 24]
        assert logic.propagate(frameRange=(20, 24)) == "Propagated 1 segment(s)."
    finally:
        logic.shutdown()
    assert not logic.link.engine or not logic.link.engine.alive


def test_inputs_cannot_change_under_a_running_step(core, engine, module, ct_path):
    from SAM2RefineLib.logic import BusyError, InputsChangedError

    node, other = core.load_volume(ct_path), core.load_volume(ct_path, "other")
    logic = open_logic(module, core.scene, engine, node)
    try:
        liver = logic.addSegment("liver")
        place_point(node, logic.pointNodes(liver)[0], LIVER_POINT)
        logic.addPoints(liver)
        task = logic.propagateTask(frameRange=(10, 29))
        task.step()
        for attempt in (lambda: logic.setInputs(other), lambda: logic.startSessionTask(other),
                        lambda: logic.addPointsTask(liver), logic.undoTask,
                        lambda: logic.configureRemote("http://elsewhere:8000")):
            with pytest.raises(BusyError, match="busy with 'Propagate'"):
                attempt()
        # Another module changes the volume's geometry meanwhile: the result is not applied.
        before = logic.segmentMask(liver)
        spacing = node.GetSpacing()
        node.SetSpacing(2 * spacing[0], spacing[1], spacing[2])
        while not task.step():
            time.sleep(0.03)
        assert isinstance(task.error, InputsChangedError)
        assert "result was not applied" in str(task.error)
        node.SetSpacing(*spacing)
        np.testing.assert_array_equal(logic.segmentMask(liver), before)
        assert logic.undoStack.labels() == []  # the session closed with the change
        # ... and the next step works, on a new session.
        logic.setInputs(other)
        segment = logic.addSegment("liver")
        place_point(other, logic.pointNodes(segment)[0], LIVER_POINT)
        assert logic.addPoints(segment)[0].frame == LIVER_POINT[2]
    finally:
        logic.closeSession()


def test_parameter_node_brings_the_settings_back_with_the_scene(core, engine, module, ct_path,
                                                                tmp_path):
    import slicer
    from SAM2RefineLib.promptnodes import new_box_node

    from tests.slicer.test_logic import SPLEEN_BOX, ras_of

    node = core.load_volume(ct_path)
    logic = open_logic(module, core.scene, engine)
    s = engine.settings
    logic.configureLocal(s.model, s.image_size, s.checkpoint, s.device, python=sys.executable)
    logic.setInputs(node, axis="axial", intensity="ct-abdomen")
    liver, spleen = logic.addSegment("liver"), logic.addSegment("spleen")
    place_point(node, logic.pointNodes(liver)[0], LIVER_POINT)
    logic.addPoints(liver)
    (i0, j0, _), (i1, j1, _) = SPLEEN_BOX
    low, high = ras_of(node, (i0, j0, 20)), ras_of(node, (i1, j1, 24))
    roi = new_box_node(core.scene, logic.segmentationNode, spleen)
    roi.SetCenter(*((low + high) / 2))
    roi.SetSize(*np.abs(high - low))
    logic.setBox(spleen, roi)
    objects = dict(logic.objectIds)
    assert sorted(objects.values()) == [1, 2]
    # Save the scene (segmentation to .seg.nrrd, the rest in the .mrml), close it, load it.
    storage = logic.segmentationNode.CreateDefaultStorageNode()
    storage.SetFileName(str(tmp_path / "segmentation.seg.nrrd"))
    core.scene.AddNode(storage).WriteData(logic.segmentationNode)
    logic.segmentationNode.SetAndObserveStorageNodeID(storage.GetID())
    logic.shutdown()
    core.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert core.scene.Commit()
    core.scene.Clear(0)
    core.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert core.scene.Import()
    restored = module.SAM2RefineLogic(core.scene)
    values = restored.restoreParameters()
    assert values["Model"] == s.model and values["ImageSize"] == str(s.image_size)
    assert values["Checkpoint"] == s.checkpoint and values["Device"] == "cpu"
    assert (values["Backend"], values["Axis"], values["Intensity"]) == (
        "local", "axial", "ct-abdomen")
    assert restored.link.settings == s and restored.intensity == "ct-abdomen"
    assert restored.volumeNode.GetName() == "CT"
    assert isinstance(restored.segmentationNode, slicer.vtkMRMLSegmentationNode)
    assert restored.objectIds == objects and restored.segmentRanges == {spleen: (20, 24)}
    # The restored map is used: the segment gets its object ID back in the new session.
    restored.link.python = sys.executable
    try:
        place_point(restored.volumeNode, restored.pointNodes(liver)[0], (70, 60, 20))
        restored.addPoints(liver)
        assert restored.objectIds[liver] == objects[liver]
        names = {o.obj_id: o.name for o in restored.session.describe()}
        assert names == {objects[liver]: liver}
    finally:
        restored.shutdown()
