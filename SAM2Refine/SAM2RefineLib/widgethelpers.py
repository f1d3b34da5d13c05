"""The widget's prompt tools (Slicer application only): + point, - point, box, and the
keyboard shortcuts of the module.

Each tool puts Slicer's views into markups placement on the selected segment's own prompt
node; a placed point, or a box once both of its corners are in, starts the matching Logic
task. Shortcuts live on the main window while the module is entered (as Segment Editor's do),
so they work with the mouse over a slice view; placement and shortcuts end on exit.
"""

from __future__ import annotations

import contextlib

from SAM2RefineLib import promptnodes

# key -> the widget method it triggers (module entered only). Not Slicer's slice-view keys.
SHORTCUTS = {"A": "onPositivePointKey", "X": "onNegativePointKey", "W": "onBoxKey",
             "M": "onMaskFromSegment", "L": "onLockKey", "P": "onPropagate",
             "Ctrl+Z": "onUndo"}


class PromptTools:
    """Placement modes, placement observers and shortcuts of the module widget."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.placement = None  # BoxPlacement of the box being drawn
        self.shortcuts: list = []
        self._pointNodesObserved: set[str] = set()

    # ----- shortcuts ---------------------------------------------------------------------------
    def installShortcuts(self) -> None:
        import qt
        import slicer

        self.removeShortcuts()
        for key, method in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", getattr(self.widget, method))
            self.shortcuts.append(shortcut)

    def removeShortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self.shortcuts = []

    # ----- tool buttons ------------------------------------------------------------------------
    def onPositivePoint(self, checked: bool) -> None:  # noqa: N802 (Qt slot naming)
        self._toggle(checked, self.widget.ui.positivePointButton, "include")

    def onNegativePoint(self, checked: bool) -> None:
        self._toggle(checked, self.widget.ui.negativePointButton, "exclude")

    def onBox(self, checked: bool) -> None:
        self._toggle(checked, self.widget.ui.boxButton, "box")

    def activeRole(self) -> str | None:
        ui = self.widget.ui
        for button, role in ((ui.positivePointButton, "include"),
                             (ui.negativePointButton, "exclude"), (ui.boxButton, "box")):
            if button.checked:
                return role
        return None

    def onSegmentChanged(self) -> None:
        """Another segment was selected: keep the tool, on that segment's own node."""
        role = self.activeRole()
        if role is not None:
            self._toggle(True, self._button(role), role)

    def _button(self, role: str):
        ui = self.widget.ui
        return {"include": ui.positivePointButton, "exclude": ui.negativePointButton,
                "box": ui.boxButton}[role]

    def _toggle(self, checked: bool, button, role: str) -> None:
        for other in ("include", "exclude", "box"):
            other_button = self._button(other)
            if other_button is not button and other_button.checked:
                other_button.blockSignals(True)
                other_button.checked = False
                other_button.blockSignals(False)
        self._dropUnfinishedBox()
        segmentId = self.widget.currentSegmentId()
        if not checked or segmentId is None:
            if checked:
                self.widget.showStatus("Select (or add) a segment first.")
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)
            self._placeMode(None)
            return
        logic = self.widget.logic
        if role == "box":
            node = promptnodes.new_box_node(logic.scene, logic._segmentation(), segmentId)
            self.placement = promptnodes.BoxPlacement(node, self._onBoxComplete)
        else:
            node = logic.pointNodes(segmentId)[0 if role == "include" else 1]
            if node.GetID() not in self._pointNodesObserved:
                self.widget.addObserver(node, node.PointPositionDefinedEvent, self._onPoint)
                self._pointNodesObserved.add(node.GetID())
        self._placeMode(node)

    @staticmethod
    def _placeMode(node) -> None:
        import slicer

        app = slicer.app.applicationLogic()
        interaction = app.GetInteractionNode()
        if node is None:
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)
            return
        selection = app.GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction.SetPlaceModePersistence(not node.IsA("vtkMRMLMarkupsROINode"))
        interaction.SetCurrentInteractionMode(interaction.Place)

    def _dropUnfinishedBox(self) -> None:
        placement, self.placement = self.placement, None
        if placement is not None and not placement.done:
            placement.stop()
            with contextlib.suppress(AttributeError):  # scene already closed
                scene = placement.roi.GetScene()
                if scene is not None:
                    scene.RemoveNode(placement.roi)

    def stop(self) -> None:
        """Leave placement mode (module exit, scene close)."""
        for role in ("include", "exclude", "box"):
            button = self._button(role)
            button.blockSignals(True)
            button.checked = False
            button.blockSignals(False)
        self._dropUnfinishedBox()
        self._pointNodesObserved.clear()
        with contextlib.suppress(AttributeError):  # application shutting down
            self._placeMode(None)

    # ----- placement events --------------------------------------------------------------------
    def _onPoint(self, caller, event) -> None:
        segmentId = caller.GetAttribute(promptnodes.SEGMENT)
        self.widget.requestPoints(segmentId)

    def _onBoxComplete(self, roi) -> None:
        self.placement = None
        self._placeMode(None)
        button = self.widget.ui.boxButton
        button.blockSignals(True)
        button.checked = False
        button.blockSignals(False)
        segmentId = roi.GetAttribute(promptnodes.SEGMENT)
        self.widget.runLogic(lambda: self.widget.logic.setBoxTask(segmentId, roi))
