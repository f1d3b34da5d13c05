"""SAM2Refine: interactive SAM 2 segmentation of CT and MR volumes in 3D Slicer.

Module, Widget, Logic and Test classes per Slicer's scripted-module convention. The engine
runs in a process of its own (a child process on this computer, or a remote server) and the
module only sends it requests that are answered at once: long work is a server job that the
widget's timer follows in short steps, so Slicer stays responsive and imports no torch. The
Logic (MRML only) lives mostly in `SAM2RefineLib/logic.py` and works from the Python console,
from tests, and with the `slicer-core` wheel outside the Slicer application.
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
from SAM2RefineLib import dependencies
from slicer.util import VTKObservationMixin

MINIMUM = ".".join(str(v) for v in dependencies.MINIMUM_SLICER)
TICK_MS = 30  # how often the widget steps a running task


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
            "slice, propagated through the volume. Needs 3D Slicer {minimum} or later and the "
            "PyTorch extension. Keys while the module is shown: A + point, X - point, W box, "
            "M mask from segment, P propagate, L lock, Ctrl+Z undo. See the "
            '<a href="https://github.com/sam2refine/SlicerSAM2Refine#readme">documentation</a>.'
        ).format(minimum=MINIMUM)
        self.parent.acknowledgementText = _(
            "Uses SAM 2 (Meta AI, Apache-2.0). Follows RFMedSAM 2 and SAM-Med2D for prompting.")


def _logicBase():
    """The Logic's base class; on a Slicer too old for the engine, a stand-in (the module
    then only says which version it needs)."""
    if dependencies.unsupported_reason() is not None:
        return object
    from SAM2RefineLib.logic import SAM2RefineLogicBase

    return SAM2RefineLogicBase


class SAM2RefineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt binding of the Logic; no computation here."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.task = None
        self.tools = None
        self._pendingPoints = None

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        problem = dependencies.unsupported_reason()
        if problem:  # Slicer 5.8 and older: say what is needed instead of failing later
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        from SAM2RefineLib.widgethelpers import PromptTools

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAM2Refine.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAM2RefineLogic()
        self.logic.log = self.showStatus
        self.tools = PromptTools(self)
        self.timer = qt.QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.connect("timeout()", self.onTick)
        self.ui.progressBar.hide()
        self.ui.segmentsTableView.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.populateModels()
        self.updateDependencies()
        ui = self.ui
        for selector in (ui.inputVolumeSelector, ui.segmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputsChanged)
        for combo in (ui.axisComboBox, ui.intensityComboBox):
            combo.connect("currentIndexChanged(int)", self.onInputsChanged)
        for combo in (ui.modelComboBox, ui.imageSizeComboBox, ui.deviceComboBox):
            combo.connect("currentIndexChanged(int)", self.onEngineSettingsChanged)
        ui.localRadioButton.connect("toggled(bool)", self.onEngineSettingsChanged)
        for pathEdit in (ui.checkpointPathLineEdit, ui.adaptersPathLineEdit):
            pathEdit.connect("currentPathChanged(QString)", self.onEngineSettingsChanged)
        for lineEdit in (ui.serverUrlLineEdit, ui.tokenLineEdit):
            lineEdit.connect("editingFinished()", self.onEngineSettingsChanged)
        ui.downloadWeightsButton.connect("clicked()", self.onDownloadWeights)
        ui.testConnectionButton.connect("clicked()", self.onTestConnection)
        ui.installDependenciesButton.connect("clicked()", lambda: self.onInstallDependencies())
        ui.addSegmentButton.connect("clicked()", self.onAddSegment)
        ui.lockSegmentButton.connect("toggled(bool)", self.onLockSegment)
        ui.segmentsTableView.connect("selectionChanged(QItemSelection,QItemSelection)",
                                     self.onSegmentSelected)
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
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneLoaded)
        slicer.app.connect("aboutToQuit()", self.logic.shutdown)
        self.onSceneLoaded()

    def enter(self):
        if self.logic is not None:
            self.tools.installShortcuts()
            self.logic.syncPromptNodes()

    def exit(self):
        if self.logic is not None:
            self.tools.stop()
            self.tools.removeShortcuts()

    def cleanup(self):
        if self.logic is None:
            return
        self.timer.stop()
        self.tools.stop()
        self.tools.removeShortcuts()
        self.removeObservers()
        self.logic.shutdown()

    def onSceneClose(self, caller=None, event=None):
        self.tools.stop()
        if self.task is not None:
            self.task.close()
            self.task = None
            self.timer.stop()
        self.logic.setInputs(None)

    def onSceneLoaded(self, caller=None, event=None):
        """A scene with SAM2Refine's parameter node: its settings come back."""
        try:
            values = self.logic.restoreParameters()
        except Exception as exc:  # e.g. a scene imported while a step runs
            self.showStatus(str(exc))
            return
        ui = self.ui
        for widget in (ui.inputVolumeSelector, ui.segmentationSelector, ui.axisComboBox,
                       ui.intensityComboBox, ui.modelComboBox, ui.imageSizeComboBox,
                       ui.deviceComboBox, ui.localRadioButton, ui.remoteRadioButton):
            widget.blockSignals(True)
        if values:
            ui.inputVolumeSelector.setCurrentNode(self.logic.volumeNode)
            ui.segmentationSelector.setCurrentNode(self.logic.segmentationNode)
            ui.axisComboBox.currentText = values["Axis"]
            ui.intensityComboBox.currentText = values["Intensity"]
            index = ui.modelComboBox.findData(values["Model"])
            if index >= 0:
                ui.modelComboBox.currentIndex = index
            ui.imageSizeComboBox.currentText = values["ImageSize"]
            ui.deviceComboBox.currentText = values["Device"]
            ui.checkpointPathLineEdit.currentPath = values["Checkpoint"]
            ui.adaptersPathLineEdit.currentPath = values["Adapters"]
            ui.serverUrlLineEdit.text = values["ServerURL"]
            ui.remoteRadioButton.checked = values["Backend"] == "remote"
            ui.localRadioButton.checked = values["Backend"] != "remote"
        for widget in (ui.inputVolumeSelector, ui.segmentationSelector, ui.axisComboBox,
                       ui.intensityComboBox, ui.modelComboBox, ui.imageSizeComboBox,
                       ui.deviceComboBox, ui.localRadioButton, ui.remoteRadioButton):
            widget.blockSignals(False)
        self.onEngineSettingsChanged()
        self.onInputsChanged()

    # ----- state -------------------------------------------------------------------------------
    def populateModels(self):
        from SAM2RefineLib import backends

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
            text = _("installed") if not plan.steps else _("to install: ") + ", ".join(
                plan.missing or [_("the engine environment")])
        except dependencies.DependencyError as exc:
            plan, text = None, str(exc)
        self.ui.dependenciesStatusLabel.text = text
        self.ui.installDependenciesButton.enabled = plan is not None and bool(plan.steps)
        return plan

    def currentSegmentId(self):
        ids = self.ui.segmentsTableView.selectedSegmentIDs()
        return ids[0] if ids else None

    def updateButtons(self, *args):
        busy = self.task is not None
        ui, logic = self.ui, self.logic
        hasVolume = ui.inputVolumeSelector.currentNode() is not None
        segmentId = self.currentSegmentId()
        locked = bool(segmentId and logic.segmentationNode and logic._segmentExists(segmentId)
                      and logic.isSegmentLocked(segmentId))
        for button in (ui.positivePointButton, ui.negativePointButton, ui.boxButton,
                       ui.maskFromSegmentButton):
            button.enabled = hasVolume and segmentId is not None and not locked and not busy
        ui.autoSegmentButton.enabled = hasVolume and not busy
        ui.addSegmentButton.enabled = hasVolume and not busy
        ui.propagateButton.enabled = not busy and bool(logic.objectIds)
        ui.undoButton.enabled = not busy and logic.canUndo()
        ui.lockSegmentButton.enabled = segmentId is not None and not busy
        ui.lockSegmentButton.blockSignals(True)
        ui.lockSegmentButton.checked = locked
        ui.lockSegmentButton.blockSignals(False)
        ui.cancelButton.enabled = busy and self.task.cancellable
        remote = ui.remoteRadioButton.checked
        # Nothing that would close the session the running task works in can change meanwhile.
        for widget in (ui.inputVolumeSelector, ui.segmentationSelector, ui.axisComboBox,
                       ui.intensityComboBox, ui.localRadioButton, ui.remoteRadioButton,
                       ui.exportSegNrrdButton, ui.exportDicomSegButton):
            widget.enabled = not busy
        for widget in (ui.serverUrlLineEdit, ui.tokenLineEdit, ui.testConnectionButton):
            widget.enabled = remote and not busy
        for widget in (ui.modelComboBox, ui.checkpointPathLineEdit, ui.adaptersPathLineEdit,
                       ui.imageSizeComboBox, ui.deviceComboBox, ui.downloadWeightsButton):
            widget.enabled = not remote and not busy
        ui.installDependenciesButton.enabled = not busy and ui.installDependenciesButton.enabled

    def onInputsChanged(self, *args):
        ui = self.ui
        try:
            self.logic.setInputs(ui.inputVolumeSelector.currentNode(),
                                 ui.segmentationSelector.currentNode(),
                                 ui.axisComboBox.currentText, ui.intensityComboBox.currentText)
        except Exception as exc:
            self.showStatus(str(exc))
        ui.segmentsTableView.setSegmentationNode(self.logic.segmentationNode)
        volume = ui.inputVolumeSelector.currentNode()
        if volume is not None and volume.GetImageData() is not None:
            last = max(volume.GetImageData().GetDimensions()) - 1
            ui.firstSliceSpinBox.maximum = ui.lastSliceSpinBox.maximum = last
        self.updateButtons()

    def onEngineSettingsChanged(self, *args):
        ui = self.ui
        try:
            if ui.remoteRadioButton.checked:
                self.logic.configureRemote(ui.serverUrlLineEdit.text.strip(),
                                           ui.tokenLineEdit.text)
            else:
                self.logic.configureLocal(
                    ui.modelComboBox.currentData or "sam2.1_hiera_tiny",
                    int(ui.imageSizeComboBox.currentText), ui.checkpointPathLineEdit.currentPath,
                    ui.deviceComboBox.currentText, ui.adaptersPathLineEdit.currentPath)
        except Exception as exc:
            self.showStatus(str(exc))
        self.updateButtons()

    def onSegmentSelected(self, *args):
        self.tools.onSegmentChanged()
        self.updateButtons()

    def showStatus(self, text):
        self.ui.statusLabel.text = str(text).splitlines()[0] if str(text) else ""
        logging.info(text)

    # ----- running tasks -----------------------------------------------------------------------
    def runLogic(self, makeTask, then=None, onError=None):
        """Make a Logic task (its checks may refuse at once, said in one line) and run it."""
        if self.task is not None:
            self.showStatus(_("Busy: wait for the current step or cancel it."))
            return False
        try:
            task = makeTask()
        except Exception as exc:
            self.showStatus(str(exc))
            if onError is not None:
                onError(exc)
            return False
        self.runTask(task, then, onError)
        return True

    def runTask(self, task, then=None, onError=None):
        """Step `task` from the timer; `then(result)` once it succeeded."""
        self.task, self._then, self._onError = task, then, onError
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self.showStatus(task.title + "...")
        self.updateButtons()
        self.timer.start()
        self.onTick()

    def onTick(self):
        task = self.task
        if task is None:
            self.timer.stop()
            return
        done = task.step()
        value, total = task.progress
        if total:
            self.ui.progressBar.setRange(0, total)
            self.ui.progressBar.value = value
        self.ui.statusLabel.text = task.status
        if not done:
            return
        self.timer.stop()
        then, onError, self.task = self._then, self._onError, None
        self.ui.progressBar.hide()
        if task.error is not None:
            logging.error(task.errorDetails)
            self.showStatus(_("Failed: ") + str(task.error))
            if onError is not None:
                onError(task.error)
        else:
            result = task.result
            self.showStatus(result if isinstance(result, str) else task.title + _(" done."))
        self.ui.segmentsTableView.setSegmentationNode(self.logic.segmentationNode)
        self.updateButtons()
        if task.error is None and then is not None:
            then(task.result)
        if self._pendingPoints is not None and self.task is None:
            segmentId, self._pendingPoints = self._pendingPoints, None
            self.requestPoints(segmentId)

    def onCancel(self):
        if self.task is not None and self.task.cancellable:
            self.task.cancel()
            self.showStatus(_("Cancelling..."))

    def requestPoints(self, segmentId):
        """A click was placed: send it now, or as soon as the running step is done."""
        if self.task is not None:
            self._pendingPoints = segmentId
            return
        self.runLogic(lambda: self.logic.addPointsTask(segmentId))

    # ----- actions -----------------------------------------------------------------------------
    def ready(self):
        """Whether the engine can run here (its environment installed, or a remote server)."""
        if self.ui.remoteRadioButton.checked:
            return True
        plan = self.updateDependencies()
        if plan is None or plan.steps:
            self.onInstallDependencies()
            return False
        return True

    def onAddSegment(self):
        try:
            count = self.logic._segmentation().GetSegmentation().GetNumberOfSegments()
            segmentId = self.logic.addSegment(f"Segment_{count + 1}")
        except Exception as exc:
            self.showStatus(str(exc))
            return
        self.ui.segmentsTableView.setSegmentationNode(self.logic.segmentationNode)
        self.ui.segmentationSelector.blockSignals(True)
        self.ui.segmentationSelector.setCurrentNode(self.logic.segmentationNode)
        self.ui.segmentationSelector.blockSignals(False)
        self.ui.segmentsTableView.setSelectedSegmentIDs([segmentId])
        self.updateButtons()

    def onLockSegment(self, locked):
        segmentId = self.currentSegmentId()
        if segmentId and self.logic.segmentationNode:
            self.logic.setSegmentLocked(segmentId, locked)
        self.updateButtons()

    def onLockKey(self):
        if self.ui.lockSegmentButton.enabled:
            self.ui.lockSegmentButton.checked = not self.ui.lockSegmentButton.checked

    def _toggleTool(self, button):
        if button.enabled:
            button.checked = not button.checked

    def onPositivePointKey(self):
        self._toggleTool(self.ui.positivePointButton)

    def onNegativePointKey(self):
        self._toggleTool(self.ui.negativePointButton)

    def onBoxKey(self):
        self._toggleTool(self.ui.boxButton)

    def onAutoSegment(self):
        source = self.ui.autoSourcePathLineEdit.currentPath
        names = self.ui.autoLabelNamesPathLineEdit.currentPath or None
        if not source:
            slicer.util.errorDisplay(
                _("Choose what Auto-segment starts from (Auto prompts): a U-Net prompt "
                  "generator checkpoint or a label file, e.g. a TotalSegmentator output."),
                windowTitle=_("Auto-segment"))
            return
        if self.ready():
            self.runLogic(lambda: self.logic.autoSegmentTask(source, names=names))

    def onMaskFromSegment(self):
        segmentId, mode = self.currentSegmentId(), self.ui.maskModeComboBox.currentText
        if segmentId is not None and self.ready():
            self.runLogic(lambda: self.logic.setMaskFromSegmentTask(segmentId, mode=mode))

    def onPropagate(self):
        frameRange = None
        if self.ui.propagateRangeCheckBox.checked:
            frameRange = (self.ui.firstSliceSpinBox.value, self.ui.lastSliceSpinBox.value)
        if self.ready():
            self.runLogic(lambda: self.logic.propagateTask(frameRange=frameRange))

    def onUndo(self):
        self.runLogic(self.logic.undoTask)

    def onDownloadWeights(self):
        from SAM2RefineLib import backends

        python = dependencies.engine_python()
        if python is None:
            self.onInstallDependencies()
            return
        name = self.ui.modelComboBox.currentData
        self.runLogic(lambda: backends.download_weights_task(name, python),
                      then=lambda _: self.populateModels())

    def onTestConnection(self):
        from SAM2RefineLib import backends

        url, token = self.ui.serverUrlLineEdit.text.strip(), self.ui.tokenLineEdit.text
        self.runLogic(lambda: backends.test_connection_task(url, token),
                      then=lambda text: setattr(self.ui.connectionStatusLabel, "text", text))

    def onInstallDependencies(self, then=None):
        """Ask for consent (listing what goes where), install PyTorch with the PyTorch
        extension, then the engine environment as watched subprocesses."""
        try:
            plan = dependencies.plan()
        except dependencies.DependencyError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if not plan.steps:
            return then(None) if then else None
        if not slicer.util.confirmOkCancelDisplay(
                _("SAM2Refine runs its engine in a separate process, with Python packages of "
                  "its own (PyTorch, SAM 2, ...) that are not installed yet. Installing them "
                  "needs a network connection and several GB of disk space, and takes several "
                  "minutes; Slicer's own packages are not changed. Install now?"),
                _("Install SAM2Refine requirements"), detailedText=plan.describe()):
            self.showStatus(_("Installation declined: SAM2Refine cannot run without them."))
            return
        if any(step.kind == "torch" for step in plan.steps):
            import PyTorchUtils

            with slicer.util.tryWithErrorDisplay(_("PyTorch could not be installed."),
                                                 waitCursor=True):
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=False,
                        torchVersionRequirement=dependencies.TORCH_REQUIREMENT) is None:
                    return
        self.runTask(dependencies.install_task(plan, log=logging.info),
                     then=lambda _: (self.updateDependencies(), then and then(None)))

    def onExportSegNrrd(self):
        path = self.savePath(_("Export .seg.nrrd"), "Segmentation (*.seg.nrrd)")
        if path:
            try:
                self.showStatus(_("Saved ") + str(self.logic.exportSegNrrd(path)))
            except Exception as exc:
                slicer.util.errorDisplay(str(exc), windowTitle=_("Export .seg.nrrd"))

    def onExportDicomSeg(self):
        path = self.savePath(_("Export DICOM-SEG"), "DICOM (*.dcm)")
        if path and self.ready():
            self.runLogic(lambda: self.logic.exportDicomSegTask(path))

    def savePath(self, title, nameFilter):
        import qt

        return qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, "", nameFilter)


SAM2RefineLogicBase = _logicBase()


class SAM2RefineLogic(ScriptedLoadableModuleLogic, SAM2RefineLogicBase):
    """MRML-only logic (see SAM2RefineLib/logic.py): usable from the Python console, e.g.

    logic = slicer.util.getModuleLogic("SAM2Refine")
    logic.configureLocal("sam2.1_hiera_tiny", 512)     # or logic.configureRemote(url, token)
    logic.startSession(volumeNode)
    liver = logic.addSegment("liver")
    logic.pointNodes(liver)[0].AddControlPoint(x, y, z)   # a click on the liver (RAS)
    logic.addPoints(liver)
    logic.propagate()
    """

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        if SAM2RefineLogicBase is not object:
            SAM2RefineLogicBase.__init__(self, scene)

    def weightsCatalogue(self):
        """Official checkpoints, and whether each is in the cache."""
        from SAM2RefineLib import backends

        return backends.catalogue()

    def dependencyPlan(self):
        """What must be installed before the engine runs (raises on a Slicer too old for it,
        or without the PyTorch extension)."""
        return dependencies.plan()

    def enginePython(self):
        """The interpreter engine programs run with (the engine environment's)."""
        engine = self.link.engine
        python = self.link.python or (engine.python if engine is not None else None) or (
            dependencies.engine_python())
        if python is None:
            raise dependencies.DependencyError(
                "The engine's environment is not installed yet: press Install in the Model "
                "section.")
        return python

    def exportDicomSegTask(self, path, referenceFolder=None):
        """DICOM-SEG of the segmentation, referencing the DICOM series the input volume was
        loaded from (found in Slicer's DICOM database) or the series in `referenceFolder`;
        written by the engine's `export` command in the engine environment."""
        from SAM2RefineLib import backends, segments
        from SAM2RefineLib.volumes import volume_from_node

        if self.segmentationNode is None or self.volumeNode is None:
            raise RuntimeError("There is no segmentation to export yet.")
        volume = self.volume if self.volume is not None else volume_from_node(self.volumeNode)
        labelmap, infos = segments.labelmap(self.segmentationNode, self.volumeNode, volume)
        files = [] if referenceFolder else backends.dicom_reference_files(self.volumeNode)
        if not referenceFolder and not files:
            raise ValueError(
                f"'{self.volumeNode.GetName()}' was not loaded from DICOM, so a DICOM-SEG cannot "
                "reference it: load the series through the DICOM module, or export .seg.nrrd.")
        return backends.export_dicom_seg_task(
            labelmap, infos, path, self.enginePython(), reference_folder=referenceFolder,
            reference_files=files, algorithm_type=self.algorithmType())  # AUTOMATIC: auto alone

    def exportDicomSeg(self, path, referenceFolder=None):
        return self.exportDicomSegTask(path, referenceFolder).run()


class SAM2RefineTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test); the full suite is Testing/Python/SAM2RefineTest.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SAM2Refine_loads()

    def test_SAM2Refine_loads(self):
        """The module loads (or, on a Slicer too old for it, says which version it needs)."""
        problem = dependencies.unsupported_reason()
        if problem:
            self.skipTest(problem)
        logic = SAM2RefineLogic()
        self.assertFalse(logic.canUndo())
        self.assertIn(MINIMUM, slicer.modules.sam2refine.helpText)
        self.delayDisplay(_("SAM2Refine module loaded from ") + os.path.dirname(__file__))
