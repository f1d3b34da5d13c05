"""SAM2Refine tests that run inside 3D Slicer (ctest, or the module's "Reload and Test").

They use the application's scene, the module's Logic and widget, and Slicer's own readers
and writers. The AI steps use a randomly initialised SAM 2.1 tiny model at 256 px, so they
need the engine's requirements (PyTorch, SAM 2) but no downloaded weights; without them
those tests are skipped, saying why.
"""

import os
import tempfile

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


def _engine_ready():
    from SAM2RefineLib import dependencies

    try:
        return not dependencies.plan().steps
    except dependencies.DependencyError:
        return False


class SAM2RefineTest(ScriptedLoadableModuleTest):
    """Module loading, widget set-up and the Logic's AI steps on a synthetic CT."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):  # noqa: N802 (unittest/Slicer API)
        for test in (self.test_module_and_widget_load, self.test_auto_segment_from_a_label_file,
                     self.test_prompts_undo_lock_and_export):
            self.setUp()
            test()

    def test_module_and_widget_load(self):
        self.assertIsNotNone(slicer.modules.sam2refine)
        widget = slicer.modules.sam2refine.widgetRepresentation().self()
        self.assertFalse(widget.ui.undoButton.enabled)
        self.assertEqual(widget.ui.undoButton.shortcut.toString(), "Ctrl+Z")
        self.assertTrue(widget.ui.modelComboBox.count >= 1)

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

    def _sessionOnPhantom(self):
        """A Logic with a random-init SAM 2.1 tiny (256 px) and a session on a phantom volume;
        skips when the engine's requirements are not installed."""
        if not _engine_ready():
            self.skipTest("PyTorch and SAM 2 are not installed (module: Install...)")
        import torch

        from SAM2Refine import SAM2RefineLogic
        from sam2refine import build_model

        torch.manual_seed(0)
        logic = SAM2RefineLogic()
        logic.setModel(build_model("sam2.1_hiera_tiny", 256, None, "cpu"))
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

    def test_prompts_undo_lock_and_export(self):
        logic, volume = self._sessionOnPhantom()
        organ, other = logic.addSegment("liver"), logic.addSegment("spleen")
        positive, negative = logic.pointNodes()
        positive.AddControlPoint(22 * 1.5, 24 * 1.5, 6 * 3.0)  # RAS of voxel (22, 24, 6)
        (result,) = logic.addPoints(organ, positive, negative)
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
