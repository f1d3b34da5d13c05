"""SAM2Refine: interactive SAM 2 segmentation of CT and MR volumes in 3D Slicer.

Module, Widget, Logic and Test classes per Slicer's scripted-module convention. The Widget is
a thin Qt binding: long work runs as `Job`s on a worker thread (or on a remote server) while a
timer shows progress and Cancel stops it. The Logic (MRML only) lives mostly in
`SAM2RefineLib/logic.py` and works from the Python console, from tests, and with the
`slicer-core` wheel outside the Slicer application.
"""

import logging
import os

import slicer

try:
    from slicer.i18n import tr as _
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
except ImportError:  # slicer-core outside the Slicer application: the Logic still works
    from SAM2RefineLib.headless import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from SAM2RefineLib.headless import tr as _
from SAM2RefineLib import backends, dependencies, segments
from SAM2RefineLib.logic import SAM2RefineLogicBase
from SAM2RefineLib.tasks import BackgroundTask, Job
from SAM2RefineLib.widgethelpers import PromptTools
from slicer.util import VTKObservationMixin


class SAM2Refine(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAM2Refine")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SAM2Refine developers"]
        self.parent.helpText = _(
            "Interactive segmentation of CT and MR with SAM 2: boxes, clicks and masks on any "
            "slice, propagated through the volume. See the "
            '<a href="https://github.com/sam2refine/SlicerSAM2Refine#readme">documentation</a>.')
        self.parent.acknowledgementText = _(
            "Uses SAM 2 (Meta AI, Apache-2.0). Follows RFMedSAM 2 and SAM-Med2D for prompting.")


class SAM2RefineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt binding of the Logic; no computation here."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.task = None
        self.tools = None

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAM2Refine.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAM2RefineLogic()
        self.logic.log = self.showStatus
        self.tools = PromptTools(self)
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onPoll)
        self.ui.progressBar.hide()
        self.ui.segmentsTableView.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.populateModels()
        self.updateDependencies()
        ui = self.ui
        ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputsChanged)
        ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputsChanged)
        for combo in (ui.axisComboBox, ui.intensityComboBox):
            combo.connect("currentIndexChanged(int)", self.onSessionSettingsChanged)
        for combo in (ui.modelComboBox, ui.imageSizeComboBox, ui.deviceComboBox):
            combo.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        ui.localRadioButton.connect("toggled(bool)", self.onModelSettingsChanged)
        for pathEdit in (ui.checkpointPathLineEdit, ui.adaptersPathLineEdit):
            pathEdit.connect("currentPathChanged(QString)", self.onModelSettingsChanged)
        ui.downloadWeightsButton.connect("clicked()", self.onDownloadWeights)
        ui.testConnectionButton.connect("clicked()", self.onTestConnection)
        ui.installDependenciesButton.connect("clicked()", lambda: self.onInstallDependencies())
        ui.addSegmentButton.connect("clicked()", self.onAddSegment)
        ui.lockSegmentButton.connect("toggled(bool)", self.onLockSegment)
        ui.segmentsTableView.connect("selectionChanged(QItemSelection,QItemSelection)",
                                     self.updateButtons)
        ui.autoSegmentButton.connect("clicked()", self.onAutoSegment)
        ui.positivePointButton.connect("toggled(bool)", self.tools.onPositivePoint)
        ui.negativePointButton.connect("toggled(bool)", self.tools.onNegativePoint)
        ui.boxButton.connect("toggled(bool)", self.tools.onBox)
        ui.maskFromSegmentButton.connect("clicked()", self.onMaskFromSegment)
        ui.propagateButton.connect("clicked()", self.onPropagate)
        ui.undoButton.connect("clicked()", self.onUndo)
        ui.cancelButton.connect("clicked()", self.onCancel)
        ui.exportSegNrrdButton.connect("clicked()", self.onExportSegNrrd)
        ui.exportDicomSegButton.connect("clicked()", self.onExportDicomSeg)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneClose)
        self.onInputsChanged()

    def cleanup(self):
        if self.task is not None:
            self.task.cancel()
        self.timer.stop()
        self.tools.stop()
        self.removeObservers()
        self.logic.closeSession()

    def onSceneClose(self, caller=None, event=None):
        self.tools.stop()
        self.logic.closeSession()

    # ----- state ---------------------------------------------------------------------------
    def populateModels(self):
        self.ui.modelComboBox.clear()
        try:
            rows = backends.catalogue()
        except ImportError:
            rows = []
        for row in rows:
            state = _("cached") if row.cached else f"{(row.size_bytes or 0) / 1e6:.0f} MB"
            self.ui.modelComboBox.addItem(f"{row.name} ({state})", row.name)
        if not rows:
            self.ui.modelComboBox.addItem("sam2.1_hiera_tiny", "sam2.1_hiera_tiny")

    def updateDependencies(self):
        try:
            plan = dependencies.plan()
            text = _("installed") if not plan.steps else _("missing: ") + ", ".join(plan.missing)
        except dependencies.DependencyError as exc:
            plan, text = None, str(exc)
        self.ui.dependenciesStatusLabel.text = text
        self.ui.installDependenciesButton.enabled = plan is None or bool(plan.steps)
        return plan

    def currentSegmentId(self):
        ids = self.ui.segmentsTableView.selectedSegmentIDs()
        return ids[0] if ids else None

    def updateButtons(self, *args):
        busy = self.task is not None
        hasVolume = self.ui.inputVolumeSelector.currentNode() is not None
        segmentId = self.currentSegmentId()
        locked = bool(segmentId and self.logic.segmentationNode
                      and self.logic.isSegmentLocked(segmentId))
        for button in (self.ui.positivePointButton, self.ui.negativePointButton,
                       self.ui.boxButton, self.ui.maskFromSegmentButton):
            button.enabled = hasVolume and not busy and segmentId is not None and not locked
        self.ui.autoSegmentButton.enabled = hasVolume and not busy
        self.ui.propagateButton.enabled = not busy and bool(self.logic.objectIds)
        self.ui.undoButton.enabled = not busy and self.logic.canUndo()
        self.ui.lockSegmentButton.enabled = segmentId is not None
        self.ui.lockSegmentButton.blockSignals(True)
        self.ui.lockSegmentButton.checked = locked
        self.ui.lockSegmentButton.blockSignals(False)
        self.ui.cancelButton.enabled = busy
        remote = self.ui.remoteRadioButton.checked
        for widget in (self.ui.serverUrlLineEdit, self.ui.tokenLineEdit,
                       self.ui.testConnectionButton):
            widget.enabled = remote
        for widget in (self.ui.modelComboBox, self.ui.checkpointPathLineEdit,
                       self.ui.adaptersPathLineEdit, self.ui.imageSizeComboBox,
                       self.ui.deviceComboBox, self.ui.downloadWeightsButton):
            widget.enabled = not remote and not busy

    def onInputsChanged(self, *args):
        self.logic.closeSession()
        self.ui.segmentsTableView.setSegmentationNode(self.ui.segmentationSelector.currentNode())
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is not None and volume.GetImageData() is not None:
            last = max(volume.GetImageData().GetDimensions()) - 1
            self.ui.firstSliceSpinBox.maximum = self.ui.lastSliceSpinBox.maximum = last
        self.updateButtons()

    def onModelSettingsChanged(self, *args):
        self.logic.setModel(None)
        self.onSessionSettingsChanged()

    def onSessionSettingsChanged(self, *args):
        if self.logic.session is not None:
            self.showStatus(_("Settings changed: the next prompt starts a new session "
                              "(segments are kept)."))
        self.logic.closeSession()
        self.updateButtons()

    def showStatus(self, text):
        self.ui.statusLabel.text = text
        logging.info(text)

    # ----- background work -----------------------------------------------------------------
    def runJob(self, job, then=None):
        """Run `job` off the UI thread; `then(result)` on the UI thread when it succeeded."""
        if self.task is not None:
            self.showStatus(_("Busy: wait for the current step or cancel it."))
            return
        self.task = BackgroundTask(job).start()
        self._then = then
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self.showStatus(job.title + "...")
        self.updateButtons()
        self.timer.start()

    def onPoll(self):
        done, value, total = self.task.poll()
        if total:
            self.ui.progressBar.setRange(0, total)
            self.ui.progressBar.value = value
        if not done:
            return
        self.timer.stop()
        task, then, self.task = self.task, self._then, None
        self.ui.progressBar.hide()
        try:
            result = task.finish()
        except Exception as exc:
            logging.error(task.error_details or str(exc))
            self.showStatus(_("Failed: ") + str(exc))
            result, then = None, None
        else:
            self.showStatus(str(result) if isinstance(result, str) else task.job.title + " done.")
        self.ui.segmentsTableView.setSegmentationNode(self.logic.segmentationNode)
        self.updateButtons()
        if then is not None:
            then(result)

    def onCancel(self):
        if self.task is not None:
            self.task.cancel()
            self.showStatus(_("Cancelling..."))

    def withSession(self, action):
        """Run `action()` once dependencies, the model and the session are ready."""
        if self.logic.session is not None:
            return action()
        plan = self.updateDependencies()
        if plan is None or plan.steps:
            return self.onInstallDependencies(then=lambda _: self.withSession(action))
        volume = self.ui.inputVolumeSelector.currentNode()
        remote = self.ui.remoteRadioButton.checked
        if not remote and self.logic.model is None:
            job = self.logic.loadModelJob(
                self.ui.modelComboBox.currentData, int(self.ui.imageSizeComboBox.currentText),
                self.ui.checkpointPathLineEdit.currentPath or None,
                self.ui.deviceComboBox.currentText,
                adapters=self.ui.adaptersPathLineEdit.currentPath or None)
            return self.runJob(job, then=lambda _: self.withSession(action))
        job = self.logic.startSessionJob(
            volume, self.ui.segmentationSelector.currentNode(),
            axis=self.ui.axisComboBox.currentText, intensity=self.ui.intensityComboBox.currentText,
            serverUrl=self.ui.serverUrlLineEdit.text.strip() if remote else None,
            token=self.ui.tokenLineEdit.text if remote else None)
        self.runJob(job, then=lambda _: self.afterSessionStarted(action))

    def afterSessionStarted(self, action):
        self.ui.segmentationSelector.blockSignals(True)
        self.ui.segmentationSelector.setCurrentNode(self.logic.segmentationNode)
        self.ui.segmentationSelector.blockSignals(False)
        self.ui.segmentsTableView.setSegmentationNode(self.logic.segmentationNode)
        action()

    def guarded(self, makeJob):
        """Build a job (may raise a user error) and run it."""
        try:
            job = makeJob()
        except Exception as exc:
            self.showStatus(str(exc))
            return
        self.runJob(job)

    # ----- actions -------------------------------------------------------------------------
    def onAddSegment(self):
        def add():
            count = self.logic.segmentationNode.GetSegmentation().GetNumberOfSegments()
            segmentId = self.logic.addSegment(f"Segment_{count + 1}")
            self.ui.segmentsTableView.setSelectedSegmentIDs([segmentId])
            self.updateButtons()
        self.withSession(add)

    def onLockSegment(self, locked):
        segmentId = self.currentSegmentId()
        if segmentId and self.logic.segmentationNode:
            self.logic.setSegmentLocked(segmentId, locked)
        self.updateButtons()

    def onAutoSegment(self):
        source = self.ui.autoSourcePathLineEdit.currentPath
        names = self.ui.autoLabelNamesPathLineEdit.currentPath or None
        if not source:
            slicer.util.errorDisplay(
                _("Choose what Auto-segment starts from (Auto prompts): a U-Net prompt "
                  "generator checkpoint or a label file, e.g. a TotalSegmentator output."),
                windowTitle=_("Auto-segment"))
            return
        self.withSession(lambda: self.guarded(
            lambda: self.logic.autoSegmentJob(source, names=names)))

    def onMaskFromSegment(self):
        segmentId, mode = self.currentSegmentId(), self.ui.maskModeComboBox.currentText
        self.withSession(lambda: self.guarded(
            lambda: self.logic.setMaskFromSegmentJob(segmentId, mode=mode)))

    def onPropagate(self):
        frameRange = None
        if self.ui.propagateRangeCheckBox.checked:
            frameRange = (self.ui.firstSliceSpinBox.value, self.ui.lastSliceSpinBox.value)
        self.guarded(lambda: self.logic.propagateJob(frameRange=frameRange))

    def onUndo(self):
        self.guarded(self.logic.undoJob)

    def onDownloadWeights(self):
        name = self.ui.modelComboBox.currentData
        self.runJob(self.logic.downloadWeightsJob(name), then=lambda _: self.populateModels())

    def onTestConnection(self):
        url, token = self.ui.serverUrlLineEdit.text.strip(), self.ui.tokenLineEdit.text
        self.runJob(self.logic.testConnectionJob(url, token),
                    then=lambda text: setattr(self.ui.connectionStatusLabel, "text", text))

    def onInstallDependencies(self, then=None, dicomSeg=False):
        """Ask for consent, then install what is missing off the UI thread."""
        try:
            plan = dependencies.plan(dicom_seg=dicomSeg)
        except dependencies.DependencyError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if not plan.steps:
            return then(None) if then else None
        if not slicer.util.confirmOkCancelDisplay(
                _("SAM2Refine needs Python packages that are not installed yet (PyTorch, "
                  "SAM 2, ...). Installing them needs a network connection and may take "
                  "several minutes. Install now?"),
                _("Install SAM2Refine requirements"), detailedText=plan.describe()):
            self.showStatus(_("Installation declined: SAM2Refine cannot run without them."))
            return

        def done(restart):
            self.updateDependencies()
            self.populateModels()
            if restart and slicer.util.confirmOkCancelDisplay(
                    _("Slicer must restart to use the updated packages. Restart now?")):
                slicer.util.restart()
            elif not restart and then:
                then(None)
        self.runJob(self.logic.installDependenciesJob(plan, log=logging.info), then=done)

    def onExportSegNrrd(self):
        path = self.savePath(_("Export .seg.nrrd"), "Segmentation (*.seg.nrrd)")
        if path:
            try:
                self.showStatus(_("Saved ") + str(self.logic.exportSegNrrd(path)))
            except Exception as exc:
                slicer.util.errorDisplay(str(exc), windowTitle=_("Export .seg.nrrd"))

    def onExportDicomSeg(self):
        path = self.savePath(_("Export DICOM-SEG"), "DICOM (*.dcm)")
        if path:
            self.onInstallDependencies(dicomSeg=True, then=lambda _: self.guarded(
                lambda: self.logic.exportDicomSegJob(path)))

    def savePath(self, title, nameFilter):
        import qt

        return qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, "", nameFilter)


class SAM2RefineLogic(ScriptedLoadableModuleLogic, SAM2RefineLogicBase):
    """MRML-only logic (see SAM2RefineLib/logic.py): usable from the Python console, e.g.

    logic = slicer.util.getModuleLogic("SAM2Refine")
    logic.loadModelJob("sam2.1_hiera_tiny", 512)()
    logic.startSession(volumeNode)
    """

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        SAM2RefineLogicBase.__init__(self, scene)

    def weightsCatalogue(self):
        """Official checkpoints, and whether each is in the cache."""
        return backends.catalogue()

    def downloadWeightsJob(self, name):
        """Download `name` into the cache with % progress; cancellable; SHA-256 checked."""
        return Job(f"Downloading {name}",
                   lambda progress, cancel: backends.download_weights(name, progress, cancel))

    def dependencyPlan(self, dicomSeg=False):
        """What must be installed before the engine runs (raises without PyTorch extension);
        with `dicomSeg` also what DICOM-SEG export needs."""
        return dependencies.plan(dicom_seg=dicomSeg)

    def installDependenciesJob(self, plan=None, log=None):
        """Install the plan's packages in subprocesses; the result says if a restart is needed."""
        plan = plan or dependencies.plan()
        return Job("Installing Python packages",
                   lambda progress, cancel: dependencies.run(plan, log, progress, cancel))

    def testConnectionJob(self, url, token=None):
        """Check a remote server: the result is a one-line description of it."""
        return Job("Testing the connection",
                   lambda progress, cancel: backends.test_connection(url, token))

    def exportDicomSegJob(self, path, referenceFolder=None):
        """DICOM-SEG of the segmentation, referencing the DICOM series the input volume was
        loaded from (found in Slicer's DICOM database) or the series in `referenceFolder`."""
        import tempfile

        if self.segmentationNode is None or self.volumeNode is None:
            raise RuntimeError("There is no segmentation to export yet.")
        labelmap, infos = segments.labelmap(self.segmentationNode, self.volumeNode, self.volume)
        algorithmType = self.algorithmType()  # AUTOMATIC only if Auto-segment alone made it
        files = [] if referenceFolder else backends.dicom_reference_files(self.volumeNode)
        if not referenceFolder and not files:
            raise ValueError(
                f"'{self.volumeNode.GetName()}' was not loaded from DICOM, so a DICOM-SEG cannot "
                "reference it: load the series through the DICOM module, or export .seg.nrrd.")

        def run(progress, cancel):
            if referenceFolder:
                return backends.export_dicom_seg(labelmap, infos, referenceFolder, path,
                                                 algorithmType)
            with tempfile.TemporaryDirectory() as folder:
                reference = backends.series_folder(files, folder)
                return backends.export_dicom_seg(labelmap, infos, reference, path, algorithmType)
        return Job("Exporting DICOM-SEG", run)

    def exportDicomSeg(self, path, referenceFolder=None):
        return self.exportDicomSegJob(path, referenceFolder)()


class SAM2RefineTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test); the full suite is Testing/Python/SAM2RefineTest.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SAM2Refine_auto_segment()

    def test_SAM2Refine_auto_segment(self):
        """Auto-segment a synthetic CT from a label file with a random-init SAM 2 tiny."""
        import numpy as np

        logic = SAM2RefineLogic()
        self.assertFalse(logic.canUndo())
        try:
            ready = not dependencies.plan().steps
        except dependencies.DependencyError:
            ready = False
        if not ready:
            self.delayDisplay(_("Engine requirements missing: auto-segment test skipped."))
            return
        import tempfile

        import SimpleITK as sitk
        import torch
        from SAM2RefineLib.volumes import volume_from_node

        from sam2refine import build_model

        torch.manual_seed(0)
        logic.setModel(build_model("sam2.1_hiera_tiny", 256, None, "cpu"))
        k, j, i = np.mgrid[0:10, 0:40, 0:48].astype(np.float32)
        organ = ((i - 20) / 9) ** 2 + ((j - 20) / 10) ** 2 + ((k - 5) / 4) ** 2 <= 1
        voxels = (np.where(organ, 150, 40)).astype(np.int16)
        node = slicer.util.addVolumeFromArray(voxels, np.diag([1.5, 1.5, 3.0, 1.0]), "phantom")
        logic.startSession(node)
        image = volume_from_node(node)
        path = os.path.join(tempfile.mkdtemp(), "organ.nii.gz")
        sitk.WriteImage(image.with_voxels(organ.astype(np.uint8)).to_sitk(), path)
        message = logic.autoSegment(path, names={1: "liver"}, stages=1, margin=1)
        self.assertIn("Auto-segmented 1 organ", message)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("liver box"))
        self.assertEqual(logic.algorithmType(), "AUTOMATIC")
        self.delayDisplay(_("SAM2Refine module loaded from ") + os.path.dirname(__file__))
