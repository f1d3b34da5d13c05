"""The widget's prompt tools (Slicer application only): + point, - point and box.

Each tool puts Slicer's views into markups placement mode; when a point or an ROI is placed,
the matching Logic job runs in the background. Nothing here computes anything.
"""

from __future__ import annotations

import contextlib

BOX_NODE_NAME = "SAM2Refine box"


class PromptTools:
    """Placement modes and placement observers for the module widget."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self._observed: list[tuple[object, int]] = []
        self.boxNode = None

    # ----- tool buttons --------------------------------------------------------------------
    def onPositivePoint(self, checked: bool) -> None:  # noqa: N802 (Qt slot naming)
        self._toggle(checked, self.widget.ui.positivePointButton, self._pointNodes()[0])

    def onNegativePoint(self, checked: bool) -> None:  # noqa: N802
        self._toggle(checked, self.widget.ui.negativePointButton, self._pointNodes()[1])

    def onBox(self, checked: bool) -> None:  # noqa: N802
        node = None
        if checked:
            import slicer

            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", BOX_NODE_NAME)
            node.CreateDefaultDisplayNodes()
            self.boxNode = node
        self._toggle(checked, self.widget.ui.boxButton, node)

    def _pointNodes(self):
        nodes = self.widget.logic.pointNodes()
        for node in nodes:
            if not self.widget.hasObserver(node, node.PointPositionDefinedEvent, self._onPoint):
                self.widget.addObserver(node, node.PointPositionDefinedEvent, self._onPoint)
        return nodes

    def _toggle(self, checked: bool, button, node) -> None:
        ui = self.widget.ui
        for other in (ui.positivePointButton, ui.negativePointButton, ui.boxButton):
            if other is not button and other.checked:
                other.blockSignals(True)
                other.checked = False
                other.blockSignals(False)
        if not checked or node is None:
            self._placeMode(None)
            return
        if node.IsA("vtkMRMLMarkupsROINode"):
            self.widget.addObserver(node, node.PointPositionDefinedEvent, self._onBox)
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

    def stop(self) -> None:
        """Leave placement mode (module exit, scene close)."""
        for button in (self.widget.ui.positivePointButton, self.widget.ui.negativePointButton,
                       self.widget.ui.boxButton):
            button.checked = False
        with contextlib.suppress(AttributeError):  # application shutting down
            self._placeMode(None)

    # ----- placement events ----------------------------------------------------------------
    def _onPoint(self, caller, event) -> None:
        widget, segmentId = self.widget, self.widget.currentSegmentId()
        if segmentId is None:
            widget.showStatus("Select (or add) a segment before placing points.")
            return
        positive, negative = widget.logic.pointNodes()
        widget.withSession(lambda: widget.guarded(
            lambda: widget.logic.addPointsJob(segmentId, positive, negative)))

    def _onBox(self, caller, event) -> None:
        widget, segmentId, roi = self.widget, self.widget.currentSegmentId(), caller
        widget.removeObserver(roi, roi.PointPositionDefinedEvent, self._onBox)
        widget.ui.boxButton.checked = False
        if segmentId is None:
            widget.showStatus("Select (or add) a segment before drawing a box.")
            return
        widget.withSession(lambda: widget.guarded(
            lambda: widget.logic.setBoxJob(segmentId, roi)))
