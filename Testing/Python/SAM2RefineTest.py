"""SAM2Refine tests that run inside 3D Slicer (ctest, or the module's "Reload and Test").

They use the application's scene, the module's Logic and widget, and Slicer's own readers
and writers. The engine runs as a child process in the engine's environment with a randomly
initialised SAM 2.1 tiny at 256 px (its checkpoint written by that environment), so no weights
are downloaded. Where the tests cannot run (a Slicer older than the module needs, the engine
environment not installed) they are reported as skipped, saying why, never as passed.
"""

import os
import subprocess
import tempfile

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

RANDOM_CHECKPOINT = """
import sys, torch
from sam2refine.sam.checkpoints import save_checkpoint
from sam2refine.sam.model import build_model
torch.manual_seed(0)
save_checkpoint(build_model("sam2.1_hiera_tiny", 256, None, "cpu"), sys.argv[1])
"""


class SAM2RefineTest(ScriptedLoadableModuleTest):
    """Module loading, widget set-up and the Logic's AI steps on a synthetic CT."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):  # noqa: N802 (unittest/Slicer API)
        for test in (self.test_module_and_widget_load, self.test_auto_segment_from_a_label_file,
                     self.test_prompts_undo_lock_and_export):
            self.setUp()
            test()

    def _requireSupportedSlicer(self):
        from SAM2RefineLib import dependencies

        problem = dependencies.unsupported_reason()
        if problem:
            self.skipTest(problem)

    def test_module_and_widget_load(self):
        self._requireSupportedSlicer()
        from SAM2RefineLib.widgethelpers import SHORTCUTS

        self.assertIsNotNone(slicer.modules.sam2refine)
        widget = slicer.modules.sam2refine.widgetRepresentation().self()
        self.assertFalse(widget.ui.undoButton.enabled)
        self.assertTrue(widget.ui.modelComboBox.count >= 1)
        slicer.util.selectModule("SAM2Refine")
        keys = {s.key.toString() for s in widget.tools.shortcuts}
        self.assertEqual(keys, set(SHORTCUTS))  # on the main window while the module is shown
        slicer.util.selectModule("Data")
        self.assertEqual(widget.tools.shortcuts, [])

    def _engineLogic(self):
        """A Logic whose child engine serves a random-init SAM 2.1 tiny at 256 px."""
        self._requireSupportedSlicer()
        from SAM2RefineLib import dependencies

        python = dependencies.engine_python()
        if python is None:
            self.skipTest("The engine environment is not installed (module: Install...).")
        from SAM2Refine import SAM2RefineLogic
        from sam2refine import engine_code_folder

        checkpoint = os.path.join(tempfile.mkdtemp(), "sam2.1_hiera_tiny.pt")
        environment = {**os.environ, "PYTHONPATH": str(engine_code_folder())}
        subprocess.run([python, "-c", RANDOM_CHECKPOINT, checkpoint], env=environment,
                       check=True, timeout=600)
        logic = SAM2RefineLogic()
        logic.configureLocal("sam2.1_hiera_tiny", 256, checkpoint, "cpu")
        self.addCleanup(logic.shutdown)
        return logic

    def _sessionOnPhantom(self):
        logic = self._engineLogic()
        volume = self._phantom()
        logic.startSession(volume)
        return logic, volume

    def _phantom(self):
        """A CT-like volume: body at 40 HU in air, a brighter organ."""
        k, j, i = np.mgrid[0:12, 0:48, 0:56].astype(np.float32)
        organ = ((i - 22) / 10) ** 2 + ((j - 24) / 12) ** 2 + ((k - 6) / 5) ** 2 <= 1
        body = ((i - 28) / 25) ** 2 + ((j - 24) / 21) ** 2 <= 1
        voxels = np.where(body, 40, -900) + np.where(organ, 110, 0)
        ijk_to_ras = np.diag([1.5, 1.5, 3.0, 1.0])
        return slicer.util.addVolumeFromArray(voxels.astype(np.int16), ijk_to_ras, "phantom")

    def test_auto_segment_from_a_label_file(self):
        """Auto-segment seeded by a label file (as a TotalSegmentator output would be)."""
        logic, volume = self._sessionOnPhantom()
        import SimpleITK as sitk
        from SAM2RefineLib.volumes import volume_from_node

        engine_volume = volume_from_node(volume)
        labels = engine_volume.with_voxels((engine_volume.voxels > 100).astype(np.uint8))
        path = os.path.join(tempfile.mkdtemp(), "organ.nii.gz")
        sitk.WriteImage(labels.to_sitk(), path)
        logic.autoSegment(path, names={1: "liver"}, stages=1, margin=1)
        segmentation = logic.segmentationNode.GetSegmentation()
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("liver"))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("liver box"))
        self.assertEqual(logic.algorithmType(), "AUTOMATIC")
        self.assertEqual(logic.undoStack.labels(), ["Auto-segment"])

    def test_prompts_undo_lock_and_export(self):
        logic, volume = self._sessionOnPhantom()
        organ, other = logic.addSegment("liver"), logic.addSegment("spleen")
        positive, _ = logic.pointNodes(organ)
        positive.AddControlPoint(22 * 1.5, 24 * 1.5, 6 * 3.0)  # RAS of voxel (22, 24, 6)
        (result,) = logic.addPoints(organ)
        self.assertEqual(result.frame, 6)
        mask = logic.segmentMask(organ)
        np.testing.assert_array_equal(mask, logic.session.object_mask(logic.objectIds[organ]))

        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        roi.SetCenter(28 * 1.5, 24 * 1.5, 6 * 3.0)
        roi.SetSize(30.0, 30.0, 0.0)
        logic.setSegmentLocked(organ)
        logic.setBox(other, roi)
        logic.propagate(frameRange=(5, 7))
        np.testing.assert_array_equal(logic.segmentMask(organ), mask)  # locked: untouched
        self.assertFalse((logic.segmentMask(other) & mask).any())
        before_box = np.zeros_like(mask)
        logic.undo()
        logic.undo()
        np.testing.assert_array_equal(logic.segmentMask(other), before_box)

        path = os.path.join(tempfile.mkdtemp(), "result.seg.nrrd")
        logic.exportSegNrrd(path)
        loaded = slicer.util.loadSegmentation(path)
        segment_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("liver")
        back = slicer.util.arrayFromSegmentBinaryLabelmap(loaded, segment_id, volume)
        np.testing.assert_array_equal(back > 0, mask)
        self.delayDisplay("SAM2Refine logic test passed")
